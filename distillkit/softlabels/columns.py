"""Arrow plumbing shared by the soft-label layouts (packed-v1 in `codec.py`, sampled-v1 in `sampled.py`): struct
columns of binary fields, ids cut into byte planes, a column's non-null records and their completion tokens.

Both layouts store one struct value per record: a layout version, a row width, `id_bits`, then binary fields that
concatenate one thing per row (a byte) or per id (`ids_0/1/2`, the bit planes). A decoder reads each binary field
of a whole column as one buffer plus per-record byte offsets (`_buffer`) and works on all rows at once.
"""

from __future__ import annotations

import numpy as np


def struct_type(fields: tuple[str, ...]):
    """The Arrow struct of a packed label column: `fields` = (codec, its width's name, id_bits, *binary planes)."""
    import pyarrow as pa

    codec, width, id_bits, *planes = fields
    return pa.struct([(codec, pa.int8()), (width, pa.int16()), (id_bits, pa.int8())]
                     + [(name, pa.binary()) for name in planes])


def struct_feature(fields: tuple[str, ...]) -> dict:
    """The `datasets` feature of the same struct."""
    from datasets import Value

    codec, width, id_bits, *planes = fields
    return {codec: Value("int8"), width: Value("int16"), id_bits: Value("int8"),
            **{name: Value("binary") for name in planes}}


def _planes(values: np.ndarray, id_bits: int) -> list[bytes]:
    """Ids (M,) -> three plane buffers (bits 0-7, 8-15, 16-23; narrower planes bit-packed, unused ones empty)."""
    out = []
    for p in range(3):
        width = min(8, id_bits - 8 * p)
        if width <= 0:
            out.append(b"")
            continue
        plane = ((values >> (8 * p)) & 0xFF).astype(np.uint8)
        if width == 8:
            out.append(plane.tobytes())
        else:
            bits = (plane[:, None] >> np.arange(width, dtype=np.uint8)) & 1
            out.append(np.packbits(bits.reshape(-1), bitorder="little").tobytes())
    return out


def _join_planes(planes: list[np.ndarray]) -> np.ndarray:
    values = np.zeros(len(planes[0]) if planes else 0, dtype=np.int32)
    for p, plane in enumerate(planes):
        values |= plane.astype(np.int32) << (8 * p)
    return values


def _unpack(buf: np.ndarray, width: int, counts: np.ndarray, byte_offsets: np.ndarray) -> np.ndarray:
    """Values of `width` < 8 bits, bit-packed per record (each record padded to a whole byte), all records' in order."""
    if 8 % width == 0:  # 1, 2 or 4 bits (ids of 17, 18, 20 bits): shift whole bytes apart, then drop the padding
        per_byte = 8 // width
        shifts = (np.arange(per_byte) * width).astype(np.uint8)
        values = ((buf[:, None] >> shifts) & ((1 << width) - 1)).reshape(-1)
        slots = np.diff(byte_offsets) * per_byte
        pad = slots - counts
        if not pad.any():
            return values
        ends = byte_offsets[1:] * per_byte
        first_pad = np.repeat(ends - pad - np.concatenate([[0], np.cumsum(pad)[:-1]]), pad)
        return np.delete(values, first_pad + np.arange(pad.sum()))
    parts = [np.unpackbits(buf[a:b], count=int(n) * width, bitorder="little")
             for a, b, n in zip(byte_offsets[:-1], byte_offsets[1:], counts)]  # one call per record
    bits = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return np.packbits(bits.reshape(-1, width), axis=1, bitorder="little").reshape(-1)  # width bits -> one byte


def _buffer(arr) -> tuple[np.ndarray, np.ndarray]:
    """A BinaryArray -> (all its values' bytes concatenated, per-value byte offsets from 0)."""
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data[offsets[0]:offsets[-1]], (offsets - offsets[0]).astype(np.int64)


def struct_fields(column, names: tuple[str, ...], version: int, name: str):
    """A label column (StructArray or ChunkedArray, no nulls) -> (the column as one array, {field: child array}), or
    (column, None) when it holds no record. Refuses a layout version other than `version` (`name`: the column)."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"the decoder of {name} takes records that all carry labels; filter out the nulls first")
    if len(column) == 0:
        return column, None
    fields = dict(zip(names, column.flatten()))
    codec = np.asarray(fields[names[0]].to_numpy(zero_copy_only=False))
    if (codec != version).any():
        bad = int(codec[codec != version][0])
        raise ValueError(f"{name} written with codec version {bad}; this distillkit reads version {version}: "
                         "upgrade distillkit to read them")
    return column, fields


def common_width(fields: dict, width: str) -> tuple[int | None, int | None]:
    """(the records' row width, their id_bits) when every record of the column shares both, else (None, None)."""
    ws = np.asarray(fields[width].to_numpy(zero_copy_only=False))
    bits = np.asarray(fields["id_bits"].to_numpy(zero_copy_only=False))
    if (ws != ws[0]).any() or (bits != bits[0]).any():
        return None, None
    return int(ws[0]), int(bits[0])


def token_ranks(field, row_offsets: np.ndarray, tokens, token_offsets, labels: str):
    """The rank field (one byte per row: where the record's own token sits in its row, its id not stored) ->
    (ranks uint8 (N,) or None when the records were written without them, mixed: some records with, some without)."""
    lengths = np.diff(row_offsets)
    rank_buf, rank_offsets = _buffer(field)
    rank_lengths = np.diff(rank_offsets)
    if not rank_lengths.any():
        return None, False
    if not (rank_lengths == lengths).all():
        return None, True
    if tokens is None or token_offsets is None:
        raise ValueError(f"these {labels} store the record's token by its rank: decoding needs the records' "
                         "completion_ids (read that column too)")
    if not np.array_equal(np.diff(token_offsets), lengths):
        raise ValueError(f"{labels} and completion_ids differ in length in some record; the shard is damaged")
    return rank_buf, False


def per_record_sums(per_row: np.ndarray, row_offsets: np.ndarray) -> np.ndarray:
    """(N,) values per row -> (R,) their sums over each record's rows [offsets[r], offsets[r+1])."""
    cum = np.concatenate([[0], np.cumsum(per_row, dtype=np.int64)])
    return cum[row_offsets[1:]] - cum[row_offsets[:-1]]


def unpack_ids(fields: dict, id_bits: int, counts: np.ndarray) -> np.ndarray:
    """The stored ids of every record, in order, from the bit planes `ids_0/1/2` (`counts` (R,): ids per record)."""
    planes = []
    for p in range(3):
        width = min(8, id_bits - 8 * p)
        if width <= 0:
            break
        buf, byte_offsets = _buffer(fields[f"ids_{p}"])
        planes.append(buf if width == 8 else _unpack(buf, width, counts, byte_offsets))
    return _join_planes(planes)


def valid_rows(column, completion_ids=None):
    """A label column's non-null rows, which ones they are (valid (R,)), and their records' completion tokens
    (int64, flat) with their offsets, or (None, None) without `completion_ids`. Shared by the column decoders."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(completion_ids, pa.ChunkedArray):
        completion_ids = completion_ids.combine_chunks()
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if not valid.all():
        mask = pa.array(valid)
        column = column.filter(mask)
        completion_ids = completion_ids.filter(mask) if completion_ids is not None else None
    if completion_ids is None:
        return column, valid, None, None
    tokens = np.asarray(completion_ids.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    raw = np.asarray(completion_ids.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    return column, valid, tokens, raw - raw[0]


def offsets_with_nulls(offsets: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row offsets of the non-null records -> offsets over every record (a null record holds no rows)."""
    if valid.all():
        return offsets
    lengths = np.zeros(len(valid), dtype=np.int64)
    lengths[valid] = np.diff(offsets)
    return np.concatenate([[0], np.cumsum(lengths)])
