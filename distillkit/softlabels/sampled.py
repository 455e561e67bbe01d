"""Sampled soft labels (`sampled-v1`): N tokens drawn from the teacher's distribution per position, stored compactly.

Instead of the teacher's k most likely tokens (top-k, `codec.py`), each position keeps N independent draws from the
teacher's full distribution p (Anshumann et al. 2025, "Sparse Logit Sampling"): the distinct ids drawn and how often
each was drawn. counts / N is an unbiased estimate of p, so the forward-KL loss built on it
(`distillkit.train.losses.sampled_row_divergence`) has the full-distribution KD gradient as its expectation, which
top-k with a tail bucket does not (tests/softlabels/test_sampled_bias.py measures both). The generated token's own
teacher logprob is kept too (one byte).

In memory (what readers return, what writers take), per record of T positions and N draws:

    topk_ids        int32 (T, N)    the distinct ids drawn, most drawn first (ties: lower id first); id 0 padding
    topk_logprobs   float32 (T, N)  log(count / N) of each, -inf padding: the *estimated* teacher distribution,
                                    which sums to 1 over the row (no tail); the loss reads it like stored top-k rows
    token_logprobs  float32 (T,)    the teacher's logprob of the record's token at t (`completion_ids[t]`), under
                                    the distribution the draws came from

The shared names let every stage between scorer and trainer (filter, special-token maps, the data loader) carry
sampled rows unchanged; which kind a shard holds is its format (`sampled_labels` column, "sampled-v1" in the
manifest), and a record read from one carries `token_logprobs`, which top-k records do not.

On disk: one value of the struct column `sampled_labels` per record:

    codec          int8    1: this layout (a reader refuses other values instead of misreading them)
    num_samples    int16   N, draws per position (<= MAX_SAMPLES)
    id_bits        int8    bits per stored id, as packed-v1
    num_distinct   binary  T bytes: distinct ids drawn at position t (0: an empty row, no draws)
    token_rank     binary  T bytes: the index of `completion_ids[t]` among row t's distinct ids, 255 when it was
                           not drawn; its id is not stored again (empty: written without completion ids)
    ids_0/1/2      binary  the other ids in row order, as packed-v1's bit planes
    counts         binary  per row, the counts of its distinct ids but the last (which is N minus their sum),
                           one byte each: a row drawn at one id stores no count at all
    token_logprob  binary  T bytes: d = -logprob of the record's token, as code = round(log1p(d) / 0.0175):
                           error <= 0.9% of d + 0.009 nats, up to d = 84 (clamped beyond); 255 when unknown

Counts are exact, so the loss reads exactly what was drawn. Cost per position: 3 bytes of row headers (well
compressed: most rows are one distinct id, the record's own token) plus an id (~2 bytes) and a count byte per
further distinct id; BENCHMARKS.md ("Soft labels", issue 33) has the measured bytes per token against top-k.

    encode_sampled_records([(ids (T,N), counts (T,N), token_logprobs (T,) | None, tokens (T,) | None), ...])
    decode_sampled_column(column, completion_ids) -> ids (N_rows, N), log_weights (N_rows, N),
                                                      token_logprobs (N_rows,), offsets (R+1,), valid (R,)
    counts_from_draws(draws (T, N)) -> ids (T, N), counts (T, N)
"""

from __future__ import annotations

import numpy as np

from distillkit.softlabels.codec import id_bits_for
from distillkit.softlabels.columns import (_buffer, _planes, common_width, offsets_with_nulls, per_record_sums,
                                           struct_feature, struct_fields, struct_type, token_ranks, unpack_ids,
                                           valid_rows)

SAMPLED = "sampled-v1"
SAMPLED_LABELS = "sampled_labels"
"""The column of the sampled format."""
SAMPLED_VERSION = 1
MAX_SAMPLES = 254
"""Draws per position: a count and a rank are one byte each (255 marks "absent")."""
ABSENT = 255
TOKEN_LP_STEP = 0.0175
"""The token logprob's grid: code c stands for -logprob = expm1(c * TOKEN_LP_STEP), 0..84 nats in 255 steps, each
~1.75% of the distance (a relative precision: a token 10 nats down is known to +-0.1)."""

_FIELDS = ("codec", "num_samples", "id_bits", "num_distinct", "token_rank", "ids_0", "ids_1", "ids_2", "counts",
           "token_logprob")


def sampled_labels_type():
    """The Arrow type of the `sampled_labels` column."""
    return struct_type(_FIELDS)


def sampled_labels_feature():
    """The `datasets` feature of the `sampled_labels` column."""
    return struct_feature(_FIELDS)


# ----------------------------------------------------------------------------------------- draws -> rows


def counts_from_draws(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draws (T, N) ints -> (distinct ids int32 (T, N), their counts int32 (T, N)), most drawn first, ties by id,
    zero-padded (a row of m distinct ids has counts > 0 in its first m columns). Vectorised: no loop over rows."""
    draws = np.asarray(draws, dtype=np.int64)
    t, n = draws.shape
    s = np.sort(draws, axis=1)
    new = np.ones((t, n), dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    run = np.cumsum(new, axis=1) - 1  # which distinct id of its row each draw is (in id order)
    rows = np.repeat(np.arange(t), n)
    counts = np.zeros((t, n), dtype=np.int64)
    np.add.at(counts, (rows, run.reshape(-1)), 1)
    ids = np.zeros((t, n), dtype=np.int64)
    ids[rows[new.reshape(-1)], run[new]] = s[new]
    # most drawn first; a stable sort of the id-ordered runs keeps ties in id order; padding (count 0) last
    order = np.argsort(-counts, axis=1, kind="stable")
    return (np.take_along_axis(ids, order, 1).astype(np.int32),
            np.take_along_axis(counts, order, 1).astype(np.int32))


def log_weights(counts: np.ndarray, num_samples: int) -> np.ndarray:
    """Counts (T, W) -> log(count / N) float32, -inf where the count is 0 (padding)."""
    with np.errstate(divide="ignore"):
        return (np.log(np.asarray(counts, dtype=np.float64)) - np.log(num_samples)).astype(np.float32)


def counts_from_log_weights(lw: np.ndarray, num_samples: int) -> np.ndarray:
    """The inverse of `log_weights`: float log(count / N) (T, W) -> int counts, 0 where -inf (or nan)."""
    lw = np.asarray(lw, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        c = np.rint(np.exp(np.where(np.isfinite(lw), lw, -np.inf)) * num_samples)
    return np.nan_to_num(c, nan=0.0).astype(np.int64)


# ----------------------------------------------------------------------------------------- encode


def encode_sampled_records(records: list[tuple], num_samples: int | None = None,
                           id_bits: int | None = None) -> list[dict]:
    """Encode several records' sampled labels with one `id_bits`; one `sampled_labels` struct value (a dict) each.

    `records`: (ids (T, W), counts (T, W), token_logprobs (T,) or None, tokens (T,) or None) per record: the distinct
    ids drawn per row (any order, each row's ids distinct), their counts (0: padding). Every non-empty row's counts
    sum to `num_samples` (default: the largest row sum seen); a row of zeros is a position without draws."""
    if not records:
        return []
    rows = []
    for ids, counts, tlp, tok in records:
        ids, counts = np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.int64)
        if ids.ndim != 2 or counts.shape != ids.shape:
            raise ValueError(f"sampled labels of shapes {ids.shape} and {counts.shape}; expected (T, W) for both")
        for name, extra in (("token_logprobs", tlp), ("completion tokens", tok)):
            if extra is not None and len(extra) != len(ids):
                raise ValueError(f"sampled labels have {len(ids)} rows but {len(extra)} {name}")
        rows.append((ids, counts, tlp, tok))
    n = num_samples or max((int(c.sum(1).max()) for _, c, _, _ in rows if c.size), default=1)
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"sampled-v1 stores 1..{MAX_SAMPLES} draws per position, not {n}")
    if any((c < 0).any() for _, c, _, _ in rows):
        raise ValueError("sampled labels hold a negative count")
    sums = np.concatenate([c.sum(1) for _, c, _, _ in rows]) if rows else np.zeros(0)
    if ((sums != 0) & (sums != n)).any():
        bad = int(sums[(sums != 0) & (sums != n)][0])
        raise ValueError(f"a row of sampled labels holds {bad} draws where every row holds num_samples={n}")
    used = [i[c > 0] for i, c, _, _ in rows]
    low = min((int(u.min()) for u in used if u.size), default=0)
    high = max((int(u.max()) for u in used if u.size), default=0)
    if low < 0:
        raise ValueError(f"sampled-label id {low} is negative")
    bits = id_bits or id_bits_for(high)
    if high.bit_length() > bits:
        raise ValueError(f"sampled-label id {high} does not fit in id_bits={bits}")
    with_tokens = all(tok is not None for *_, tok in rows)
    return [_encode_one(ids, counts, tlp, tok if with_tokens else None, n, bits) for ids, counts, tlp, tok in rows]


def _encode_one(ids: np.ndarray, counts: np.ndarray, tlp, tokens, n: int, bits: int) -> dict:
    t = len(ids)
    order = np.lexsort((ids, -counts), axis=1) if t else np.zeros(ids.shape, np.int64)  # most drawn first, then id
    ids, counts = np.take_along_axis(ids, order, 1), np.take_along_axis(counts, order, 1)
    present = counts > 0
    by_id = np.sort(np.where(present, ids, -1 - np.arange(ids.shape[1])[None, :]), axis=1)  # padding: distinct < 0
    if ((by_id[:, 1:] == by_id[:, :-1]) & (by_id[:, 1:] >= 0)).any():
        raise ValueError("a row of sampled labels names the same id twice; give each distinct id once with its count")
    m = present.sum(1)
    keep = present.copy()
    rank = None
    if tokens is not None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        match = (ids == tokens[:, None]) & present
        has = match.any(1)
        rank = np.where(has, match.argmax(1), ABSENT).astype(np.uint8)
        keep[np.flatnonzero(has), rank[has]] = False
    # every count but the row's last: columns 0..m-2
    stored = present & (np.arange(ids.shape[1])[None, :] < (m - 1)[:, None])
    code = _token_lp_codes(tlp, t)
    planes = _planes(ids[keep], bits)
    return {"codec": SAMPLED_VERSION, "num_samples": n, "id_bits": bits,
            "num_distinct": m.astype(np.uint8).tobytes(),
            "token_rank": rank.tobytes() if rank is not None else b"",
            "ids_0": planes[0], "ids_1": planes[1], "ids_2": planes[2],
            "counts": counts[stored].astype(np.uint8).tobytes(), "token_logprob": code.tobytes()}


def _token_lp_codes(tlp, t: int) -> np.ndarray:
    """Token logprobs (T,) or None -> T code bytes (ABSENT for None, nan and -inf)."""
    if tlp is None:
        return np.full(t, ABSENT, dtype=np.uint8)
    d = -np.asarray(tlp, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        code = np.clip(np.rint(np.log1p(np.maximum(d, 0.0)) / TOKEN_LP_STEP), 0, ABSENT - 1)
    return np.where(np.isfinite(d), code, ABSENT).astype(np.uint8)


# ----------------------------------------------------------------------------------------- decode


def decode_sampled_struct_array(column, tokens: np.ndarray | None, token_offsets: np.ndarray | None):
    """A `sampled_labels` StructArray of R non-null records -> (ids int32 (N_rows, W), log weights float32
    (N_rows, W), token_logprobs float32 (N_rows,), row offsets (R+1,)), W = num_samples. `tokens`/`token_offsets`:
    the records' completion ids concatenated, needed when the records store the token by its rank."""
    column, fields = struct_fields(column, _FIELDS, SAMPLED_VERSION, SAMPLED_LABELS)
    if fields is None:
        return (np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32), np.zeros(0, np.float32),
                np.zeros(1, np.int64))
    n, id_bits = common_width(fields, "num_samples")
    if n is None:
        return _decode_per_record(column, tokens, token_offsets)
    m, row_offsets = _buffer(fields["num_distinct"])
    m = m.astype(np.int64)  # uint8: m - 1 would wrap at an empty row
    rank, mixed = token_ranks(fields["token_rank"], row_offsets, tokens, token_offsets, "sampled labels")
    if mixed:
        return _decode_per_record(column, tokens, token_offsets)
    if (m > n).any():
        raise ValueError(f"a row of sampled labels has {int(m.max())} distinct ids for num_samples={n}; damaged")
    ids = _decode_distinct_ids(fields, m, n, id_bits, rank, tokens, row_offsets)
    counts = _decode_counts(fields["counts"], m, n)
    return ids, log_weights(counts, n), _decode_token_logprobs(fields["token_logprob"], len(m)), row_offsets


def _decode_distinct_ids(fields: dict, m: np.ndarray, n: int, id_bits: int, rank, tokens, row_offsets) -> np.ndarray:
    """Each row's m distinct ids -> int32 (N_rows, n), zero-padded: the stored ones from the bit planes, the record's
    own token (where `rank` places it) from `tokens`."""
    rows = len(m)
    keep = np.arange(n)[None, :] < m[:, None]
    refs = np.zeros(rows, bool)
    if rank is not None:
        refs = rank != ABSENT
        if (rank[refs] >= m[refs]).any():
            raise ValueError("a sampled-label token rank points past its row; the record is damaged")
        keep[np.flatnonzero(refs), rank[refs]] = False
    kept = unpack_ids(fields, id_bits, per_record_sums(m - refs, row_offsets))
    if kept.shape[0] != keep.sum():
        raise ValueError(f"sampled_labels hold {kept.shape[0]} ids where their rows need {int(keep.sum())}; damaged")
    ids = np.zeros((rows, n), dtype=np.int32)
    ids[keep] = kept
    if rank is not None:
        ids[np.flatnonzero(refs), rank[refs]] = tokens[refs]
    return ids


def _decode_counts(field, m: np.ndarray, n: int) -> np.ndarray:
    """The stored counts (every one of a row's but its last) -> int64 (N_rows, n), the last being n minus the rest."""
    rows = len(m)
    counts = np.zeros((rows, n), dtype=np.int64)
    stored_mask = np.arange(n)[None, :] < (m - 1)[:, None]
    stored, _ = _buffer(field)
    if stored.shape[0] != stored_mask.sum():
        raise ValueError(f"sampled_labels hold {stored.shape[0]} counts where their rows need "
                         f"{int(stored_mask.sum())}; the record is damaged")
    counts[stored_mask] = stored
    last = np.flatnonzero(m > 0)
    counts[last, m[last] - 1] = n - counts[last].sum(1)
    if (counts[np.arange(n)[None, :] < m[:, None]] <= 0).any():
        raise ValueError("sampled_labels counts exceed num_samples in some row; the record is damaged")
    return counts


def _decode_token_logprobs(field, rows: int) -> np.ndarray:
    """The token-logprob bytes -> float32 (N_rows,), nan where unknown (ABSENT, or a record written without them)."""
    code, _ = _buffer(field)
    tlp = np.full(rows, np.nan, dtype=np.float32)
    if code.shape[0] == rows:
        known = code != ABSENT
        tlp[known] = -np.expm1(code[known] * TOKEN_LP_STEP)
    return tlp


def _decode_per_record(column, tokens, token_offsets):
    """Records of different num_samples or id_bits in one column: each alone, padded to the widest."""
    parts, offsets = [], [0]
    for r in range(len(column)):
        tok = off = None
        if tokens is not None:
            tok = tokens[token_offsets[r]:token_offsets[r + 1]]
            off = np.array([0, len(tok)])
        i, lw, tlp, _ = decode_sampled_struct_array(column.slice(r, 1), tok, off)
        parts.append((i, lw, tlp))
        offsets.append(offsets[-1] + len(i))
    width = max(p[0].shape[1] for p in parts)
    ids = np.concatenate([np.pad(i, ((0, 0), (0, width - i.shape[1]))) for i, _, _ in parts])
    lws = np.concatenate([np.pad(lw, ((0, 0), (0, width - lw.shape[1])), constant_values=-np.inf)
                          for _, lw, _ in parts])
    return ids, lws, np.concatenate([t for _, _, t in parts]), np.array(offsets)


def decode_sampled_column(column, completion_ids=None):
    """A `sampled_labels` column (nulls allowed) and the records' `completion_ids` column -> (ids int32 (N, W), log
    weights float32 (N, W), token_logprobs float32 (N,), row offsets (R+1,), valid (R,)); as `codec.decode_column`."""
    column, valid, tokens, token_offsets = valid_rows(column, completion_ids)
    ids, lws, tlp, offsets = decode_sampled_struct_array(column, tokens, token_offsets)
    return ids, lws, tlp, offsets_with_nulls(offsets, valid), valid


def encode_sampled_record(ids, counts, token_logprobs=None, tokens=None) -> dict:
    """One record's sampled labels -> its `sampled_labels` value (see `encode_sampled_records`)."""
    return encode_sampled_records([(ids, counts, token_logprobs, tokens)])[0]


def decode_sampled_record(value: dict, tokens=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One `sampled_labels` value -> (ids int32 (T, N), log weights float32 (T, N), token_logprobs float32 (T,))."""
    import pyarrow as pa

    column = pa.array([value], type=sampled_labels_type())
    tok = None if tokens is None else np.asarray(tokens, dtype=np.int64).reshape(-1)
    ids, lws, tlp, _ = decode_sampled_struct_array(column, tok, None if tok is None else np.array([0, len(tok)]))
    return ids, lws, tlp


# ----------------------------------------------------------------------------------------- drawing


def sample_seed(seed: int, sequence) -> int:
    """A 63-bit seed for one scored sequence from the run seed and its token ids: the same record gets the same draws
    whatever shard, batch or order it is scored in (a resumed run redraws a shard identically)."""
    import hashlib

    digest = hashlib.sha256(np.asarray(sequence, dtype=np.int64).tobytes() + int(seed).to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def draw_sampled_labels(logits, num_samples: int, temperature: float = 1.0, seed: int = 0, tokens=None,
                        rows_per_pass: int = 256):
    """Exact draws from softmax(logits / temperature), N per position -> sampled labels.

    logits: a (T, V) torch tensor (any device and dtype), or a list of (rows, V) tensors that stack to it (a scorer's
    chunks: the whole (T, V) never needs to exist); tokens (T,) the record's token at each position or None ->
    (ids int32 (T, N), counts int32 (T, N), token_logprobs float32 (T,) or None), as `counts_from_draws`.

    Inverse-CDF sampling in float64 (a float32 cumulative sum over 152k entries drifts by ~1e-5, which would move the
    rare tokens' chances): u ~ U[0, 1) from a CPU generator seeded with `seed`, all T x N of them drawn before any
    chunk, so the draws do not depend on the chunking nor on the device; an id of probability 0 is never drawn.
    `rows_per_pass` bounds the (rows, V) float64 temporaries (256 x 152k: 311 MB)."""
    import torch

    if isinstance(logits, torch.Tensor):
        logits = [logits[a:a + rows_per_pass] for a in range(0, logits.shape[0], rows_per_pass)]
    t = sum(int(z.shape[0]) for z in logits)
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand((t, num_samples), generator=g, dtype=torch.float64)
    draws = torch.empty((t, num_samples), dtype=torch.long)
    tlp = torch.empty(t, dtype=torch.float32) if tokens is not None else None
    tok = torch.as_tensor(np.asarray(tokens), dtype=torch.long) if tokens is not None else None
    if tok is not None and len(tok) != t:
        raise ValueError(f"{len(tok)} tokens for {t} rows of logits")
    a = 0
    with torch.no_grad():
        for chunk in logits:
            for c in range(0, chunk.shape[0], rows_per_pass):
                z = chunk[c:c + rows_per_pass].float()
                b = a + z.shape[0]
                logp = (z / temperature if temperature != 1 else z).log_softmax(-1)
                cdf = logp.double().exp_().cumsum_(-1)
                x = (u[a:b].to(cdf.device) * cdf[:, -1:]).contiguous()
                draws[a:b] = torch.searchsorted(cdf, x, right=True).clamp_(max=z.shape[-1] - 1).cpu()
                if tok is not None:
                    tlp[a:b] = logp.gather(-1, tok[a:b, None].to(logp.device))[:, 0].cpu()
                del logp, cdf, x
                a = b
    ids, counts = counts_from_draws(draws.numpy())
    return ids, counts, None if tlp is None else tlp.numpy()
