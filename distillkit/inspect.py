"""Summaries of a stage output folder (counts, lengths, finish reasons, rejection reasons)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from distillkit.errors import DistillkitError
from distillkit.records import (
    StageRecords, count_records, list_shards, read_manifest, reading_shard, soft_label_bytes, soft_label_format,
)


def _percentiles(values: list[int], qs=(0.5, 0.9, 0.99)) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    out = {f"p{int(q * 100)}": float(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]) for q in qs}
    out["mean"] = round(sum(s) / len(s), 1)
    out["max"] = float(s[-1])
    return out


def _soft_labels(folder: Path, formats: Counter, label_bytes: int, tokens: int) -> dict[str, Any]:
    """The stored soft labels: format (shards per format when a resumed run mixes them), k, bytes per token."""
    return {"format": next(iter(formats)) if len(formats) == 1 else dict(formats),
            "k": StageRecords(folder).topk, "bytes": label_bytes,
            "bytes_per_token": round(label_bytes / tokens, 2) if tokens else None}


def summarize_output(folder: str | Path) -> dict[str, Any]:
    """What `distillkit inspect` shows: the manifest plus statistics computed from the records."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not folder.is_dir():
        raise DistillkitError(f"{folder}: no such folder; give a stage output folder such as runs/quickstart/generate")
    manifest = read_manifest(folder)
    shards = list_shards(folder)
    if manifest is None and not shards:
        raise DistillkitError(f"{folder} holds no distillkit stage output (no manifest.json, no shard-*.parquet)")
    summary: dict[str, Any] = {
        "folder": str(folder),
        "stage": manifest.stage if manifest else "unknown",
        "complete": manifest is not None,
        "config_hash": manifest.config_hash if manifest else None,
        "shards": len(shards),
        "records": count_records(folder),
        "counts": manifest.counts if manifest else {},
        "timings": manifest.timings if manifest else {},
    }
    lengths: list[int] = []
    finish: Counter = Counter()
    sources: Counter = Counter()
    reasons: Counter = Counter()
    prompts: set[str] = set()
    wanted = ["prompt_id", "source", "completion_tokens", "finish_reason", "verdicts"]
    formats: Counter = Counter()
    label_bytes = 0
    for shard in shards:
        with reading_shard(shard):  # a damaged shard is named, with the fix
            schema = pq.read_schema(shard)
            table = pq.read_table(shard, columns=[c for c in wanted if c in schema.names])
            fmt = soft_label_format(schema)
            if fmt is not None:
                formats[fmt] += 1
                label_bytes += soft_label_bytes(shard)
        for row in table.to_pylist():
            prompts.add(row.get("prompt_id"))
            sources[row.get("source") or ""] += 1
            if row.get("completion_tokens") is not None:
                lengths.append(row["completion_tokens"])
            if row.get("finish_reason"):
                finish[row["finish_reason"]] += 1
            for v in row.get("verdicts") or []:
                if v.get("passed") is False:
                    reasons[f"{v['verifier']}:{v['reason']}"] += 1
    summary.update(prompts=len(prompts), completion_tokens=_percentiles(lengths),
                   finish_reasons=dict(finish.most_common()), sources=dict(sources.most_common()),
                   rejection_reasons=dict(reasons.most_common()),
                   soft_labels=_soft_labels(folder, formats, label_bytes, sum(lengths)) if formats else None)
    rejected = folder / "rejected"
    if rejected.is_dir() and list_shards(rejected):
        summary["rejected"] = summarize_output(rejected)
    return json.loads(json.dumps(summary, default=str))
