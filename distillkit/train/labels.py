"""What kind of soft labels training records carry, and the training cache's form of sampled ones.

Split from distillkit/train/data.py (which tokenizes records into examples): `record_topk` (the stored width k),
`soft_label_kind` (top-k or sampled), `check_label_kind` (the records' kind against train.kd.teacher_probs) and
`drop_row_padding` (sampled rows cut to their drawn ids for the cache)."""

from __future__ import annotations

from distillkit.errors import DistillkitError


def record_topk(records) -> int:
    """Width k of the records' stored soft labels (0 when they have none).

    `records` is a `datasets.Dataset` of trace records, or a list of records (a training mixture, where
    chat rows without soft labels may come first).
    """
    if isinstance(records, list):
        return next((len(r["topk_ids"][0]) for r in records if r.get("topk_ids") is not None and len(r["topk_ids"])), 0)
    if hasattr(records, "topk"):  # StageRecords: from the schema
        return records.topk
    if "topk_ids" not in records.column_names:
        return 0
    for row in records["topk_ids"][:16]:
        if row:
            return len(row[0])
    return 0


def soft_label_kind(records) -> str | None:
    """"sampled" when the records carry sampled soft labels, "topk" for top-k ones, None when none carries any.

    A stage folder says it by its format (sampled-v1); records in memory by `token_logprobs`, which only sampled
    labels carry (distillkit/softlabels/sampled.py). A list mixing both kinds (a training mixture of two runs) is an
    error: one loss reads one kind."""
    fmt = getattr(records, "soft_label_format", None)
    if isinstance(fmt, str):
        return "sampled" if fmt == "sampled-v1" else "topk"
    if not isinstance(records, list):
        names = getattr(records, "column_names", [])
        return ("sampled" if "token_logprobs" in names else "topk") if "topk_ids" in names else None
    kinds = {"sampled" if r.get("token_logprobs") is not None else "topk" for r in records
             if r.get("topk_ids") is not None}
    if len(kinds) > 1:
        raise DistillkitError("the training records mix sampled and top-k soft labels (sources scored or generated "
                              "with different soft_labels); one KD loss reads one kind: label every source the same "
                              "way, or train the others without soft labels")
    return kinds.pop() if kinds else None


def check_label_kind(records, teacher_probs: str) -> None:
    """Refuse soft labels of the other kind than `train.kd.teacher_probs` reads: top-k rows read as sampled ones (or
    the reverse) would give a loss that runs and means something else."""
    kind = soft_label_kind(records)
    if kind == "sampled" and teacher_probs != "sampled":
        raise DistillkitError(f"the records carry sampled soft labels (draws, stored as sampled-v1), and "
                              f"train.kd.teacher_probs={teacher_probs} reads top-k ones; set train.kd.teacher_probs: "
                              "sampled")
    if kind == "topk" and teacher_probs == "sampled":
        raise DistillkitError("train.kd.teacher_probs: sampled reads sampled soft labels, and the records carry top-k "
                              "ones; set train.kd.teacher_probs: topk_tail, or score the traces with "
                              "score.soft_labels: sampled (score.teacher.backend: transformers)")


def drop_row_padding(ex: dict) -> dict:
    """An example's sampled rows (T, N) cut to ragged rows of their drawn ids: N draws give m <= N distinct ids, then
    -inf padding (most drawn first, distillkit/softlabels/sampled.py), so the cache keeps ~6 ids a token at N = 32
    instead of 32 (BENCHMARKS.md, "Sampled soft labels"). Rows off the KD mask keep nothing; only trailing -inf entries
    go, so a row reads the same to the loss (`DistillCollator` pads it back with -inf, which the loss drops)."""
    import numpy as np

    ids, lp = np.asarray(ex["kd_ids"]), np.asarray(ex["kd_logprobs"])
    if ids.ndim != 2:
        raise DistillkitError(f"sampled soft labels of shape {ids.shape}; expected (T, N) rows")
    kept = np.isfinite(lp) & (np.asarray(ex["kd_mask"]) > 0)[:, None]
    width = np.where(kept.any(1), lp.shape[1] - kept[:, ::-1].argmax(1), 0)  # up to the row's last finite entry
    keep = np.arange(lp.shape[1])[None, :] < width[:, None]
    cuts = np.cumsum(width)[:-1]
    return {**ex, "kd_ids": np.split(ids[keep], cuts), "kd_logprobs": np.split(lp[keep], cuts)}


def _first(records, n: int):
    if hasattr(records, "head"):  # StageRecords
        return records.head(n)
    return records[:n] if isinstance(records, list) else records.select(range(min(n, len(records))))
