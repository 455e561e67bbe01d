"""Reading a stage output: whole (`read_records`), shard by shard (`iter_records`), or in bounded batches
(`StageRecords`); packed and sampled soft labels come back decoded as `topk_ids` / `topk_logprobs` columns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.records.damaged import _brief, _check_columns, _rewrite_fix, reading_shard
from distillkit.records.schema import SOFT_LABEL_COLUMNS
from distillkit.records.shards import ROW_GROUP_BYTES, list_shards, rows_per_batch


_UNPACKED = ("topk_ids", "topk_logprobs")
_UNPACKED_SAMPLED = (*_UNPACKED, "token_logprobs")


def _encoded_column(names) -> tuple[str | None, tuple[str, ...]]:
    """(the encoded soft-label column of a shard, or None; the columns readers decode it into)."""
    if "soft_labels" in names:
        return "soft_labels", _UNPACKED
    if "sampled_labels" in names:
        return "sampled_labels", _UNPACKED_SAMPLED
    return None, ()


def _read_table(path: Path, columns: list[str] | None = None):
    """One whole shard (or some of its columns) as an Arrow table, errors naming the file; packed or sampled soft
    labels come back as `topk_ids` / `topk_logprobs` (/ `token_logprobs`) columns (`unpack_soft_labels`)."""
    import pyarrow.parquet as pq

    with reading_shard(path):
        names = pq.read_schema(path).names
        encoded, unpacked = _encoded_column(names)
        if columns is not None:
            _check_columns(path, names + list(unpacked), columns)
        if encoded is None or (columns is not None and not set(unpacked) & set(columns)):
            return pq.read_table(path, columns=columns)
        wanted = None if columns is None else list(dict.fromkeys(
            [c for c in columns if c not in unpacked] + [encoded]
            + (["completion_ids"] if "completion_ids" in names else [])))
        table = pq.read_table(path, columns=wanted)
    try:
        table = unpack_soft_labels(table)
    except ValueError as e:  # a damaged or foreign `soft_labels` value
        raise DistillkitError(f"{path}: its soft labels do not decode ({e}): {_rewrite_fix(path)}") from e
    return table if columns is None else table.select(columns)


def unpack_soft_labels(table):
    """An Arrow table whose `soft_labels` column (packed-v1) is replaced by `topk_ids` (int32) and `topk_logprobs`
    (float16) columns of fixed width k, as fp16-format shards hold them, or whose `sampled_labels` column
    (sampled-v1) is replaced by `topk_ids`, `topk_logprobs` (float32 log(count / N), exact) and `token_logprobs`;
    other tables are returned as they are. Decoding needs the table's `completion_ids` (the record's token is stored
    by its rank)."""
    import numpy as np
    import pyarrow as pa

    encoded, _ = _encoded_column(table.column_names)
    if encoded is None:
        return table
    completion = table.column("completion_ids") if "completion_ids" in table.column_names else None
    tlp = None
    if encoded == "soft_labels":
        from distillkit.softlabels.codec import decode_column

        ids, lps, offsets, valid = decode_column(table.column(encoded), completion)
        lps = lps.astype(np.float16)
    else:
        from distillkit.softlabels.sampled import decode_sampled_column

        ids, lps, tlp, offsets, valid = decode_sampled_column(table.column(encoded), completion)
    k = ids.shape[1] or 1  # no record with labels: all-null columns, of some width
    mask = pa.array(~valid) if not valid.all() else None
    offsets = pa.array(offsets.astype(np.int32))
    columns = {
        "topk_ids": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(
            pa.array(ids.reshape(-1)), k), mask=mask),
        "topk_logprobs": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(
            pa.array(lps.reshape(-1)), k), mask=mask),
    }
    if tlp is not None:
        columns["token_logprobs"] = pa.ListArray.from_arrays(offsets, pa.array(tlp), mask=mask)
    at = table.column_names.index(encoded)
    table = table.remove_column(at)
    for j, (name, column) in enumerate(columns.items()):
        table = table.add_column(at + j, name, column)
    # the `datasets` features in the metadata still name the packed column: let readers infer them again
    meta = {key: value for key, value in (table.schema.metadata or {}).items() if key != b"huggingface"}
    return table.replace_schema_metadata(meta or None)


def _parquet_file(path: Path):
    """A pyarrow ParquetFile of the shard (its footer read), errors naming the file."""
    import pyarrow.parquet as pq

    with reading_shard(path):
        return pq.ParquetFile(path)


def read_records(folder: str | os.PathLike, columns: list[str] | None = None):
    """All records of a stage output as one in-memory `datasets.Dataset`."""
    import pyarrow as pa
    from datasets import Dataset

    shards = list_shards(folder)
    if not shards:
        if not Path(folder).exists():
            raise DistillkitError(f"{folder} does not exist; run the stage that writes it first")
        return Dataset.from_dict({})
    tables = [_read_table(s, columns) for s in shards]
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:  # a column of one type in one shard, another in the next
        raise DistillkitError(f"the shards of {folder} do not fit together ({_brief(e)}): they come from different "
                              "recipes or versions; keep one stage output per folder") from e
    return Dataset(table)


class StageRecords:
    """The records of a stage output read shard by shard, ~16 MB of rows at a time, never all at once.

    Soft-label columns come as numpy (T, k) views of each batch (no per-number Python objects); other
    columns as Python values. Supports len(), iteration, `head(n)`, `column_names` and `topk`."""

    def __init__(self, folder: str | os.PathLike, batch_bytes: int = ROW_GROUP_BYTES):
        self.folder = Path(folder)
        self.shards = list_shards(folder)
        self.batch_bytes = batch_bytes

    def __len__(self) -> int:
        return count_records(self.folder)

    @property
    def schema(self):
        return _parquet_file(self.shards[0]).schema_arrow if self.shards else None

    @property
    def column_names(self) -> list[str]:
        """The columns of the records as iterated (packed soft labels as `topk_ids` and `topk_logprobs`, sampled ones
        with `token_logprobs` too)."""
        names = list(self.schema.names) if self.shards else []
        encoded, unpacked = _encoded_column(names)
        if encoded is not None:
            at = names.index(encoded)
            names[at:at + 1] = list(unpacked)
        return names

    @property
    def soft_label_format(self) -> str | None:
        """How the first shard stores soft labels: "packed-v1", "fp16", "sampled-v1", or None without them."""
        return soft_label_format(self.schema) if self.shards else None

    @property
    def topk(self) -> int:
        """Width of the stored soft labels (0 without them), from the schema (fp16) or the first records (packed; for
        sampled labels the draws per position N, the width they decode to)."""
        import pyarrow as pa

        if not self.shards:
            return 0
        encoded, _ = _encoded_column(self.schema.names)
        if encoded is not None:
            field = "k" if encoded == "soft_labels" else "num_samples"
            pf = _parquet_file(self.shards[0])
            if pf.metadata.num_row_groups == 0:
                return 0
            with reading_shard(self.shards[0]):
                ks = pf.read_row_group(0, columns=[f"{encoded}.{field}"]).column(0).combine_chunks().field(field)
            return max((k for k in ks.to_pylist() if k is not None), default=0)
        if "topk_ids" not in self.schema.names:
            return 0
        typ = self.schema.field("topk_ids").type
        return typ.value_type.list_size if pa.types.is_list(typ) and pa.types.is_fixed_size_list(typ.value_type) else 0

    def __iter__(self) -> Iterator[dict]:
        for shard in self.shards:
            pf = _parquet_file(shard)
            batches = pf.iter_batches(batch_size=rows_per_batch(pf, self.batch_bytes))
            while True:
                with reading_shard(shard):  # the footer was fine, a page further in may not be
                    batch = next(batches, None)
                if batch is None:
                    break
                try:
                    records = list(_batch_records(batch))
                except ValueError as e:  # packed soft labels that do not decode: damaged or foreign values
                    raise DistillkitError(f"{shard}: its soft labels do not decode ({e}): {_rewrite_fix(shard)}") from e
                yield from records

    def head(self, n: int) -> list[dict]:
        out = []
        for rec in self:
            if len(out) == n:
                break
            out.append(rec)
        return out


def _batch_records(batch) -> Iterator[dict]:
    """The rows of an Arrow batch as dicts; list<fixed_size_list> columns as numpy (T, k) arrays, and packed soft
    labels decoded (the whole batch in one vectorised pass) into `topk_ids` int32 and `topk_logprobs` float32 arrays."""
    import numpy as np
    import pyarrow as pa

    columns = {}
    for name, col in zip(batch.schema.names, batch.columns):
        typ = col.type
        if name == "soft_labels":
            from distillkit.softlabels.codec import decode_column

            names = batch.schema.names
            completion = batch.column(names.index("completion_ids")) if "completion_ids" in names else None
            ids, lps, offsets, valid = decode_column(col, completion)
            spans = list(zip(offsets[:-1], offsets[1:], valid))
            columns["topk_ids"] = [ids[a:b] if ok else None for a, b, ok in spans]
            columns["topk_logprobs"] = [lps[a:b] if ok else None for a, b, ok in spans]
        elif name == "sampled_labels":
            from distillkit.softlabels.sampled import decode_sampled_column

            names = batch.schema.names
            completion = batch.column(names.index("completion_ids")) if "completion_ids" in names else None
            ids, lws, tlp, offsets, valid = decode_sampled_column(col, completion)
            spans = list(zip(offsets[:-1], offsets[1:], valid))
            columns["topk_ids"] = [ids[a:b] if ok else None for a, b, ok in spans]
            columns["topk_logprobs"] = [lws[a:b] if ok else None for a, b, ok in spans]
            columns["token_logprobs"] = [tlp[a:b] if ok else None for a, b, ok in spans]
        elif pa.types.is_list(typ) and pa.types.is_fixed_size_list(typ.value_type) and col.null_count == 0:
            k = typ.value_type.list_size
            offsets = np.asarray(col.offsets)
            rows = col.values  # FixedSizeListArray; its `.values` ignore its own offset, so add it back
            values = rows.values.to_numpy(zero_copy_only=False).reshape(-1, k)
            base = rows.offset
            columns[name] = [values[base + offsets[i]:base + offsets[i + 1]] for i in range(len(col))]
        else:
            columns[name] = col.to_pylist()
    for i in range(batch.num_rows):
        yield {name: values[i] for name, values in columns.items()}


def soft_label_format(schema) -> str | None:
    """The soft-label format of a shard's Arrow schema: "packed-v1", "fp16", "sampled-v1", or None when it holds none."""
    if "soft_labels" in schema.names:
        return "packed-v1"
    if "sampled_labels" in schema.names:
        return "sampled-v1"
    return "fp16" if "topk_ids" in schema.names else None


def soft_label_bytes(shard: str | os.PathLike) -> int:
    """Bytes the soft-label columns take on disk in one shard (compressed column chunks, either format)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(shard).metadata
    total = 0
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.path_in_schema.split(".")[0] in SOFT_LABEL_COLUMNS:
                total += col.total_compressed_size
    return total


def iter_records(folder: str | os.PathLike, columns: list[str] | None = None) -> Iterator[dict]:
    """Records one at a time, shard by shard, without loading the whole output."""
    for shard in list_shards(folder):
        yield from _read_table(shard, columns).to_pylist()


def count_records(folder: str | os.PathLike) -> int:
    return sum(_parquet_file(s).metadata.num_rows for s in list_shards(folder))
