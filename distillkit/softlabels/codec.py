"""The compact soft-label encoding `packed-v1`: top-k ids bit-packed, logprobs quantized, decoded vectorised.

One record's (T, k) soft labels (rows sorted by logprob, as every backend writes them) become one value of the
struct column `soft_labels`:

    codec         int8    1: this layout (a reader refuses other values instead of misreading them)
    k             int16   candidates per token
    id_bits       int8    bits per stored id, ceil(log2(largest id + 1)) over the records encoded together
    sampled_rank  binary  T bytes: the rank of the sampled token (`completion_ids[t]`) in row t, or k when it
                          is not among the candidates; its id is not stored again (empty: written without them)
    ids_0/1/2     binary  the other ids in row order, cut into bit planes 0-7, 8-15 and 16-23 of `id_bits`
                          (a plane narrower than 8 bits is bit-packed, little-endian bit order; unused: empty)
    gap_1         binary  T bytes: the quantized distance of rank 1 below rank 0 (codes, below)
    gap_2_4       binary  T * min(3, k - 2) bytes: code of rank r minus code of rank r - 1, ranks 2-4
    gap_rest      binary  T * (k - 5) bytes: the same for ranks 5..k-1
    tail          binary  T bytes: the teacher's mass outside the top-k, as a quantized logit

Logprobs. Rank r's distance below the top-1, d_r = lp_0 - lp_r >= 0, is rounded to the nearest point of a fixed
grid (`gap_grid()`) whose step grows with d: 0.08 nat at the top, x e^(0.3 d) further down, at most 1 nat. An entry
e^-d as likely as the top-1 moves KL(stored || decoded) about e^-d times less for the same error, so it is stored
coarser. Codes do not decrease along a row, so consecutive differences (small numbers, mostly 0-2 in the tail)
are stored; three columns because rank 1's gap is spread out where the tail's are not, and Parquet's zstd keeps
one entropy table per column chunk. The top-k mass is stored on its own, as logit(tail) in steps of 0.136
(relative precision in both the tail and the top-k mass), and the decoded entries are renormalized to it:
storing the top-1 logprob instead would let the shape's rounding move the tail, a large relative error for a
confident row whose tail is 1e-4. Measured on real SmolLM2-135M rows (BENCHMARKS.md, issue 33): mean
KL(stored || decoded) over the k + 1 buckets ~3e-4 nats per position.

Ids. Exact: `id_bits` per id, split into byte planes so that zstd sees the high bits of frequent tokens (low ids
in BPE vocabularies) as the runs of small values they are; uniform random ids cost exactly `id_bits`. The sampled
token's id (in the top-k at ~every position) comes back from `completion_ids`, saving one id per position.

Reserved codes: a shape code of 255 is padding (logprob -inf: a step that offered fewer than k candidates; NaN
and +-inf logprobs are stored as padding too); tail 254 means no tail (the stored top-k sums to >= 1, fp16
rounding), 255 an empty row (no finite candidate).

    encode_record(ids (T,k), logprobs (T,k), tokens (T,)) -> dict        (one `soft_labels` value)
    decode_record(value, tokens) -> ids int32 (T,k), logprobs float32 (T,k)
    decode_struct_array(column, tokens, token_offsets) -> ids (N,k), logprobs (N,k), row offsets (R+1,)

Everything is numpy over whole arrays: no Python loop runs per token (encode_records and the fallback of
decode_struct_array for mixed widths loop per record).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from distillkit.softlabels.columns import (  # noqa: F401  (their former home: old imports keep working)
    _buffer,
    _join_planes,
    _planes,
    _unpack,
    common_width,
    offsets_with_nulls,
    per_record_sums,
    struct_feature,
    struct_fields,
    struct_type,
    token_ranks,
    unpack_ids,
    valid_rows,
)

PACKED = "packed-v1"
FP16 = "fp16"
FORMATS = (PACKED, FP16)
SOFT_LABELS = "soft_labels"
"""The column of the packed format; the fp16 format's columns are `topk_ids` and `topk_logprobs`."""
CODEC_VERSION = 1

PAD_CODE = 255
TAIL_NONE = 254
TAIL_EMPTY = 255
TAIL_LOW = -20.7
TAIL_STEP = 0.136
"""Tail codes 0..253 stand for logit(tail) = TAIL_LOW + TAIL_STEP * code, from -20.7 to 13.8: tails from 1e-9 (the
`topk_tail` loss floors the teacher's at 1e-6, so a confident row keeps what the loss sees) up to a top-k mass of
1e-6 (a flat row of a large vocabulary). A value beyond is clamped."""
GAP_FIRST_STEP = 0.08
GAP_GROWTH = 0.3
GAP_MAX_STEP = 1.0
"""The grid's step at distance d below the top-1: min(GAP_FIRST_STEP * e^(GAP_GROWTH * d), GAP_MAX_STEP) nats. Chosen
on real SmolLM2 rows and on broad synthetic rows (BENCHMARKS.md, issue 33): coarser grids save ~0.1-0.4 bytes per
token for 20-60% more KL."""
MAX_K = 254  # the sampled rank is a byte with k meaning "absent"
MAX_ID_BITS = 24

_FIELDS = ("codec", "k", "id_bits", "sampled_rank", "ids_0", "ids_1", "ids_2", "gap_1", "gap_2_4", "gap_rest",
           "tail")


def soft_labels_type():
    """The Arrow type of the `soft_labels` column."""
    return struct_type(_FIELDS)


def soft_labels_feature():
    """The `datasets` feature of the `soft_labels` column."""
    return struct_feature(_FIELDS)


@lru_cache(maxsize=1)
def gap_grid() -> np.ndarray:
    """The 255 distances below the top-1 (nats) that shape codes 0..254 stand for, then +inf (code 255, padding)."""
    points = [0.0]
    for _ in range(PAD_CODE - 1):  # 254 steps, once per process
        d = points[-1]
        points.append(d + min(GAP_FIRST_STEP * float(np.exp(GAP_GROWTH * d)), GAP_MAX_STEP))
    return np.array(points + [np.inf], dtype=np.float64)


def id_bits_for(max_id: int) -> int:
    """Bits that hold ids 0..max_id (at least 1)."""
    bits = max(1, int(max_id).bit_length())
    if bits > MAX_ID_BITS:
        raise ValueError(f"soft-label id {max_id} needs {bits} bits; packed-v1 stores at most {MAX_ID_BITS} "
                         "(a vocabulary of 16.7M); write these labels with soft_label_format: fp16")
    return bits


# ----------------------------------------------------------------------------------------- encode


def _quantize_gaps(d: np.ndarray) -> np.ndarray:
    """Distances (N, k-1) >= 0 (inf or nan: padding) -> codes uint8: the nearest grid point, 255 for padding."""
    codes = np.searchsorted(_midpoints(), d).astype(np.uint8)  # midpoints below d = index of the nearest point
    codes[~np.isfinite(d)] = PAD_CODE
    return codes


@lru_cache(maxsize=1)
def _relative_probs() -> np.ndarray:
    """exp(-distance) per code (0 for padding): a row's probabilities relative to its top-1, looked up, not computed."""
    return np.exp(-gap_grid())


@lru_cache(maxsize=1)
def _midpoints() -> np.ndarray:
    grid = gap_grid()[:PAD_CODE]
    return ((grid[:-1] + grid[1:]) / 2).astype(np.float32)


def _tail_codes(lp: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """(N,) tail codes of sanitized float64 rows (-inf padding) sorted by logprob."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        top = np.where(empty, 0.0, lp[:, 0])
        lse = top + np.log(np.exp(lp - top[:, None]).sum(1))  # log of the top-k mass, exact for tiny tails
        has_tail = lse < 0
        log_tail = np.log(-np.expm1(np.where(has_tail, lse, -1.0)))
        logit = log_tail - np.where(has_tail, lse, -1.0)
        code = np.clip(np.rint((logit - TAIL_LOW) / TAIL_STEP), 0, TAIL_NONE - 1)
    code = np.where(has_tail, code, TAIL_NONE)
    return np.where(empty, TAIL_EMPTY, code).astype(np.uint8)


def _encode_rows(ids: np.ndarray, logprobs: np.ndarray, tokens: np.ndarray | None):
    """(N, k) rows -> (sampled_rank (N,) uint8 or None, kept ids (M,), per-row kept counts (N,), gaps (N, k-1), tail (N,))."""
    n, k = ids.shape
    lp = np.asarray(logprobs, dtype=np.float64)
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    ids = np.asarray(ids)
    if n and not (lp[:, :-1] >= lp[:, 1:]).all():  # backends write rank order: then this sort is skipped
        order = np.argsort(-lp, axis=1, kind="stable")
        lp = np.take_along_axis(lp, order, 1)
        ids = np.take_along_axis(ids, order, 1)
    empty = ~np.isfinite(lp[:, 0]) if k else np.ones(n, bool)
    with np.errstate(invalid="ignore"):
        d = (lp[:, :1] - lp[:, 1:]).astype(np.float32)  # -inf - -inf = nan on empty rows: padding
    codes = _quantize_gaps(d)
    codes[empty] = PAD_CODE
    gaps = np.diff(codes.astype(np.int16), axis=1, prepend=0).astype(np.uint8)
    tail = _tail_codes(lp, empty)
    keep = np.ones((n, k), dtype=bool)
    rank = None
    if tokens is not None:
        tokens = np.asarray(tokens)
        if tokens.shape != (n,):
            raise ValueError(f"soft labels have {n} rows but {tokens.shape[0] if tokens.ndim else 0} completion tokens")
        match = (ids == tokens[:, None]) & np.isfinite(lp)
        has = match.any(1)
        rank = np.where(has, match.argmax(1), k).astype(np.uint8)
        keep[np.flatnonzero(has), rank[has]] = False
    return rank, ids[keep], keep.sum(1), gaps, tail


ROWS_PER_PASS = 1 << 18
"""Rows encoded in one numpy pass (~150 MB of temporaries at k=20): a shard of 32k-token traces is done in parts."""


def encode_records(records: list[tuple], id_bits: int | None = None) -> list[dict]:
    """Encode several records' soft labels with one `id_bits` (so a batch of them decodes in one pass).

    `records`: (ids (T,k), logprobs (T,k), tokens (T,) or None) per record, all with the same k; tokens are used only
    when every record has them. Returns one `soft_labels` struct value (a dict) per record."""
    if not records:
        return []
    arrays = [(np.asarray(i), np.asarray(lp)) for i, lp, _ in records]
    k = arrays[0][0].shape[1] if arrays[0][0].ndim == 2 else 0
    for (i, lp), (_, _, tok) in zip(arrays, records):
        if i.ndim != 2 or i.shape[1] != k or lp.shape != i.shape:
            raise ValueError(f"soft labels of shapes {i.shape} and {lp.shape}; expected (T, {k}) for both")
        if tok is not None and len(tok) != len(i):
            raise ValueError(f"soft labels have {len(i)} rows but {len(tok)} completion tokens")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"packed-v1 stores 1..{MAX_K} candidates per token, not k={k}")
    low = min((int(i.min()) for i, _ in arrays if i.size), default=0)
    high = max((int(i.max()) for i, _ in arrays if i.size), default=0)
    if low < 0:
        raise ValueError(f"soft-label id {low} is negative")
    bits = id_bits or id_bits_for(high)
    if high.bit_length() > bits:
        raise ValueError(f"soft-label id {high} does not fit in id_bits={bits}")
    with_tokens = all(tok is not None for _, _, tok in records)
    out: list[dict] = []
    group: list[int] = []
    rows = 0
    for r, (i, _) in enumerate(arrays):
        group.append(r)
        rows += len(i)
        if rows >= ROWS_PER_PASS or r == len(arrays) - 1:
            out += _encode_group([arrays[j] for j in group],
                                 [records[j][2] for j in group] if with_tokens else None, k, bits)
            group, rows = [], 0
    return out


def _encode_group(arrays: list[tuple], tokens: list | None, k: int, bits: int) -> list[dict]:
    """The records of one pass: their rows concatenated, encoded at once, and cut back into records."""
    lengths = np.array([len(i) for i, _ in arrays])
    n = int(lengths.sum())
    ids = np.concatenate([i for i, _ in arrays]).astype(np.int64) if n else np.zeros((0, k), np.int64)
    lp = np.concatenate([lp for _, lp in arrays]) if n else np.zeros((0, k))
    tok = None
    if tokens is not None:
        tok = np.concatenate([np.asarray(t).reshape(-1) for t in tokens]).astype(np.int64) if n else np.zeros(0, np.int64)
    rank, kept, kept_per_row, gaps, tail = _encode_rows(ids, lp, tok)
    row_ends = np.cumsum(lengths)
    row_starts = row_ends - lengths
    kept_cum = np.concatenate([[0], np.cumsum(kept_per_row)])
    near = min(3, max(0, k - 2))
    out = []
    for a, b in zip(row_starts, row_ends):  # one record at a time: slices of the pass's arrays
        planes = _planes(kept[kept_cum[a]:kept_cum[b]], bits)
        g = gaps[a:b]
        out.append({"codec": CODEC_VERSION, "k": k, "id_bits": bits,
                    "sampled_rank": rank[a:b].tobytes() if rank is not None else b"",
                    "ids_0": planes[0], "ids_1": planes[1], "ids_2": planes[2],
                    "gap_1": np.ascontiguousarray(g[:, :1]).tobytes(),
                    "gap_2_4": np.ascontiguousarray(g[:, 1:1 + near]).tobytes(),
                    "gap_rest": np.ascontiguousarray(g[:, 1 + near:]).tobytes(),
                    "tail": tail[a:b].tobytes()})
    return out


def encode_record(ids, logprobs, tokens=None, id_bits: int | None = None) -> dict:
    """One record's soft labels -> its `soft_labels` value. ids (T,k) int >= 0, logprobs (T,k) float, tokens (T,)
    the completion ids (their rank is stored instead of a second copy of the id; None: every id is stored)."""
    return encode_records([(ids, logprobs, tokens)], id_bits)[0]


# ----------------------------------------------------------------------------------------- decode


def _decode_logprobs(gaps: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """gaps (N, k-1) uint8, tail (N,) uint8 -> logprobs (N, k) float32, -inf padding.

    float64 inside: a confident row's tail (1e-6) is the difference between 1 and the top-k mass, which float32 sums
    get only to ~1e-7; rounding the row's normalizer there would move every such tail by ~10%, the same way."""
    n = len(tail)
    codes = np.minimum(np.cumsum(gaps, axis=1, dtype=np.int16), PAD_CODE)
    neg = -gap_grid()[codes]
    lse = np.log1p(_relative_probs()[codes].sum(1))  # rank 0 (distance 0) is the row's maximum: no overflow
    logit = TAIL_LOW + tail * TAIL_STEP
    log_mass = np.where(tail == TAIL_NONE, 0.0, -np.logaddexp(0.0, logit))  # log(1 - sigmoid(logit))
    out = np.empty((n, gaps.shape[1] + 1), dtype=np.float32)
    shift = log_mass - lse
    out[:, 0] = shift
    np.add(neg, shift[:, None], out=out[:, 1:], casting="unsafe")
    out[tail == TAIL_EMPTY] = -np.inf
    return out


def _decode_ids(rank: np.ndarray | None, kept: np.ndarray, tokens: np.ndarray | None, n: int, k: int) -> np.ndarray:
    keep = np.ones((n, k), dtype=bool)
    out = np.empty((n, k), dtype=np.int32)
    if rank is not None:
        has = rank < k
        keep[np.flatnonzero(has), rank[has]] = False
        out[~keep] = tokens[has]
    if kept.shape[0] != keep.sum():
        raise ValueError(f"soft_labels hold {kept.shape[0]} ids where their rows need {int(keep.sum())}; the record "
                         "is damaged")
    out[keep] = kept
    return out


def decode_record(value: dict, tokens=None) -> tuple[np.ndarray, np.ndarray]:
    """One `soft_labels` value -> (ids int32 (T, k), logprobs float32 (T, k)); `tokens`: the record's completion ids."""
    import pyarrow as pa

    column = pa.array([value], type=soft_labels_type())
    tok = None if tokens is None else np.asarray(tokens, dtype=np.int64).reshape(-1)
    ids, lps, _ = decode_struct_array(column, tok, None if tok is None else np.array([0, len(tok)]))
    return ids, lps


def decode_struct_array(column, tokens: np.ndarray | None, token_offsets: np.ndarray | None):
    """A whole `soft_labels` column (an Arrow StructArray of R non-null records) -> all its rows at once.

    tokens: the records' completion ids concatenated (N,), token_offsets (R+1,) where each record's start; needed
    when the records store the sampled token's rank. Returns (ids int32 (N, k), logprobs float32 (N, k), row
    offsets (R+1,)): record r's rows are [offsets[r], offsets[r+1]).
    """
    column, fields = struct_fields(column, _FIELDS, CODEC_VERSION, "soft_labels")
    if fields is None:
        return np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32), np.zeros(1, np.int64)
    k, id_bits = common_width(fields, "k")
    if k is None:  # records of several k or id_bits in one column (rare: runs are written with one k)
        return _decode_per_record(column, tokens, token_offsets)
    tail, row_offsets = _buffer(fields["tail"])
    rank, mixed = token_ranks(fields["sampled_rank"], row_offsets, tokens, token_offsets, "soft labels")
    if mixed:  # some records stored with ranks, some without: one at a time
        return _decode_per_record(column, tokens, token_offsets)
    n = len(tail)
    lps = _decode_logprobs(_gap_codes(fields, k, n), tail)
    refs = rank < k if rank is not None else np.zeros(n, bool)
    kept = unpack_ids(fields, id_bits, per_record_sums(k - refs.astype(np.int64), row_offsets))
    return _decode_ids(rank, kept, tokens, n, k), lps, row_offsets


def _gap_codes(fields: dict, k: int, n: int) -> np.ndarray:
    """The three gap columns -> (n, k - 1) shape codes, ranks 1..k-1 (see the module docstring)."""
    if k <= 1:
        return np.zeros((n, 0), np.uint8)
    near = min(3, k - 2)
    widths = (1, near, k - 2 - near)
    cols = [_buffer(fields[name])[0] for name in ("gap_1", "gap_2_4", "gap_rest")]
    return np.concatenate([g.reshape(n, w) for g, w in zip(cols, widths)], axis=1)


def _decode_per_record(column, tokens, token_offsets):
    """Records of different k or id_bits in one column: each alone (rare: runs are written with one k)."""
    ids, lps, offsets = [], [], [0]
    for r in range(len(column)):
        tok = off = None
        if tokens is not None:
            tok = tokens[token_offsets[r]:token_offsets[r + 1]]
            off = np.array([0, len(tok)])
        i, lp, _ = decode_struct_array(column.slice(r, 1), tok, off)
        ids.append(i)
        lps.append(lp)
        offsets.append(offsets[-1] + len(i))
    if len({a.shape[1] for a in ids}) > 1:
        raise ValueError(f"soft labels of different widths k={sorted({a.shape[1] for a in ids})} in one column")
    return np.concatenate(ids), np.concatenate(lps), np.array(offsets)


# ----------------------------------------------------------------------------------------- error


def kl_topk(stored: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """KL(stored || decoded) per row over the k + 1 buckets (the top-k and the tail), in nats: (N,k), (N,k) -> (N,).

    Each side's tail is 1 - its top-k mass (0 when the top-k sums to >= 1, as fp16 rounding allows), and each side
    is normalized over its buckets: the distribution the `topk_tail` loss sees."""
    def buckets(lp):
        lp = np.where(np.isfinite(lp), np.asarray(lp, dtype=np.float64), -np.inf)
        p = np.exp(lp)
        b = np.concatenate([p, np.clip(1 - p.sum(1, keepdims=True), 0, None)], axis=1)
        return b / b.sum(1, keepdims=True)

    a, b = buckets(stored), buckets(decoded)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)
    return terms.sum(1)


# ----------------------------------------------------------------------------------------- Arrow columns


def decode_column(column, completion_ids=None):
    """A `soft_labels` column (nulls allowed: records without soft labels) and the records' `completion_ids` column
    (Arrow arrays of the same length) -> (ids int32 (N, k), logprobs float32 (N, k), row offsets (R+1,), valid (R,)).

    Record r's rows are [offsets[r], offsets[r+1]); a record whose `soft_labels` is null has none (valid[r] False)."""
    column, valid, tokens, token_offsets = valid_rows(column, completion_ids)
    ids, lps, offsets = decode_struct_array(column, tokens, token_offsets)
    return ids, lps, offsets_with_nulls(offsets, valid), valid
