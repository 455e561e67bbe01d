"""The filter stage: verify every trace, drop duplicates and contaminated prompts, select per prompt.

Reads `<run>/generate`, writes kept records to `<run>/filter` and rejected ones to
`<run>/filter/rejected` (same shard numbering as the input). Every record carries the verdicts of
every step that judged it in its `verdicts` column; the manifest's `stats` hold the funnel, the reasons
and the per-source pass rates (`distillkit/filter/stats.py`, `FilterStats`, defines them).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distillkit.config import FilterConfig, RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.filter.stats import FilterStats
from distillkit.filter.verifiers.base import Verdict
from distillkit.pipeline import stage_config_hash
from distillkit.records import Manifest, StageOutput, list_shards, read_manifest, record_features

log = logging.getLogger(__name__)

REJECTED = "rejected"
# What the verifiers read; soft labels and token ids stay on disk until records are written back.
VERIFY_COLUMNS = ["id", "prompt_id", "sample_index", "source", "problem", "gold_answer", "tests", "prefill",
                  "completion", "reasoning", "response", "reasoning_closed", "completion_tokens", "finish_reason"]
_CHUNK = 256


@dataclass
class FilterResult:
    """Per-record verdicts (step name, Verdict) in step order, the kept mask, and the funnel stats."""

    verdicts: list[list[tuple[str, Verdict]]]
    kept: list[bool]
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _step_names(cfg: FilterConfig) -> list[str]:
    names, seen = [], Counter()
    for spec in cfg.verifiers:
        seen[spec.kind] += 1
        names.append(spec.kind if seen[spec.kind] == 1 else f"{spec.kind}#{seen[spec.kind]}")
    return names


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from distillkit.progress import progress_bar

    return progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=True, unit="records")


def filter_records(records: Sequence[dict[str, Any]], cfg: FilterConfig, show_progress: bool = True) -> FilterResult:
    """Judge `records` (dicts with at least VERIFY_COLUMNS) with the whole chain of `cfg`."""
    from distillkit.filter.registry import build

    n = len(records)
    verdicts: list[list[tuple[str, Verdict]]] = [[] for _ in range(n)]
    alive = [True] * n
    funnel = [{"step": "input", "in": n, "rejected": 0, "out": n}]
    outcomes: dict[str, dict[str, Counter]] = {}
    timings: dict[str, float] = {}
    verifier_stats: dict[str, dict[str, Any]] = {}

    def record_step(step: str, judged: dict[int, Verdict], candidates: Sequence[int]) -> None:
        before = sum(alive)
        outcomes[step] = {name: Counter(v.reason for v in judged.values() if v.passed is value)
                          for name, value in (("rejected", False), ("passed", True), ("cannot_judge", None))}
        for i, v in judged.items():
            verdicts[i].append((step, v))
        for i in candidates:
            if i in judged and judged[i].passed is False:
                alive[i] = False
        funnel.append({"step": step, "in": before, "rejected": before - sum(alive), "out": sum(alive)})

    progress = _progress() if show_progress else None
    if progress:
        progress.start()
    try:
        if cfg.decontaminate.enabled:
            from distillkit.filter.decontaminate import Decontaminator

            t0 = time.time()
            deco = Decontaminator(cfg.decontaminate.benchmarks, cfg.decontaminate.ngram)
            by_prompt: dict[str, Verdict] = {}
            judged = {}
            for i, rec in enumerate(records):
                pid = rec["prompt_id"]
                if pid not in by_prompt:
                    hit = deco.match(rec.get("problem") or "")
                    by_prompt[pid] = (Verdict(False, "contaminated", f"{hit[0]}: '{hit[1]}'") if hit
                                      else Verdict(True, "clean"))
                judged[i] = by_prompt[pid]
            record_step("decontaminate", judged, range(n))
            timings["decontaminate_s"] = round(time.time() - t0, 3)

        for step, spec in zip(_step_names(cfg), cfg.verifiers):
            t0 = time.time()
            todo = [i for i in range(n) if alive[i] or not cfg.stop_at_first_rejection]
            task = progress.add_task(f"filter {step}", total=len(todo)) if progress else None
            judged = {}
            with build(spec.kind, spec.params, num_workers=cfg.num_workers) as verifier:
                # The judge defers to this run's earlier rule verdicts, which live here, not in the records.
                with_prior = getattr(verifier, "reads_prior_verdicts", False)
                for start in range(0, len(todo), _CHUNK):
                    chunk = todo[start:start + _CHUNK]
                    batch = [{**records[i], "prior_verdicts": [v.as_record_entry(s) for s, v in verdicts[i]]}
                             if with_prior else records[i] for i in chunk]
                    for i, v in zip(chunk, verifier.batch(batch)):
                        judged[i] = v
                    if progress:
                        progress.advance(task, len(chunk))
                if hasattr(verifier, "stats"):  # usage worth a manifest line (the judge's requests, tokens)
                    verifier_stats[step] = verifier.stats()
            record_step(step, judged, todo)
            timings[f"{step}_s"] = round(time.time() - t0, 3)
    finally:
        if progress:
            progress.stop()

    # The teacher's solve rate per prompt counts verifier passes only: a correct trace dropped later
    # as a duplicate was still solved.
    passed_verifiers = [all(v.passed is not False for s, v in verdicts[i] if s != "decontaminate") for i in range(n)]

    dedup = cfg.dedup
    if dedup.exact or dedup.near.enabled:
        from distillkit.filter.dedup import find_duplicates

        t0 = time.time()
        candidates = [i for i in range(n) if alive[i]]
        dups = find_duplicates(records, candidates, dedup)
        record_step("dedup", {i: dups.get(i, Verdict(True, "unique")) for i in candidates}, candidates)
        timings["dedup_s"] = round(time.time() - t0, 3)

    from distillkit.filter.selection import pass_rates, select

    candidates = [i for i in range(n) if alive[i]]
    dropped = select(records, candidates, pass_rates(records, passed_verifiers), cfg.selection)
    record_step("selection", {i: dropped.get(i, Verdict(True, "selected")) for i in candidates}, candidates)

    sources: dict[str, dict[str, Any]] = defaultdict(lambda: {"records": 0, "passed_verifiers": 0, "kept": 0})
    prompts: dict[str, set] = defaultdict(set)
    prompts_kept: dict[str, set] = defaultdict(set)
    for i, rec in enumerate(records):
        src = rec.get("source") or ""
        sources[src]["records"] += 1
        sources[src]["passed_verifiers"] += int(passed_verifiers[i])
        sources[src]["kept"] += int(alive[i])
        prompts[src].add(rec["prompt_id"])
        if alive[i]:
            prompts_kept[src].add(rec["prompt_id"])
    for src, s in sources.items():
        s["pass_rate"] = round(s["passed_verifiers"] / s["records"], 4) if s["records"] else 0.0
        s["prompts"] = len(prompts[src])
        s["prompts_kept"] = len(prompts_kept[src])
    stats = FilterStats(funnel=funnel,
                        reasons={k: dict(sorted(sum(v.values(), Counter()).items())) for k, v in outcomes.items()},
                        outcomes={k: {o: dict(sorted(c.items())) for o, c in v.items()} for k, v in outcomes.items()},
                        sources=dict(sorted(sources.items())), verifiers=verifier_stats).dump()
    return FilterResult(verdicts=verdicts, kept=alive, stats=stats, timings=timings)


def _annotate(row: dict[str, Any], judged: list[tuple[str, Verdict]]) -> dict[str, Any]:
    row = dict(row)
    row["verdicts"] = list(row.get("verdicts") or []) + [v.as_record_entry(s) for s, v in judged]
    details = {s: v.detail for s, v in judged if v.detail and v.passed is not True}
    if details:  # the record schema's verdict entries have no detail field; keep it readable in `meta`
        try:
            meta = json.loads(row.get("meta") or "{}")
        except json.JSONDecodeError:
            meta = {"original_meta": row.get("meta")}
        meta["filter_details"] = details
        row["meta"] = json.dumps(meta, ensure_ascii=False)
    return row


def run_filter(cfg: RecipeConfig, overwrite: bool = False, show_progress: bool = True) -> Manifest:
    """Run the filter stage of `cfg`; returns the manifest (the existing one if already complete)."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    gen_dir, out_dir = cfg.stage_dir("generate"), cfg.stage_dir("filter")
    gen_manifest = read_manifest(gen_dir)
    if gen_manifest is None:
        raise DistillkitError(f"{gen_dir} has no finished generate output (no manifest.json); "
                              "run `distillkit generate` first")
    out = StageOutput(out_dir, "filter", stage_config_hash(cfg, "filter"), cfg.filter.model_dump(mode="json"),
                      inputs={str(gen_dir): gen_manifest.config_hash})
    if not overwrite and out.is_complete():
        return out.manifest()
    out.begin(overwrite=overwrite)
    # Filtering is not resumed shard by shard (dedup and selection look across shards): start clean.
    for p in list_shards(out_dir):
        p.unlink()
    shutil.rmtree(out_dir / REJECTED, ignore_errors=True)

    shards = list_shards(gen_dir)
    rows: list[dict[str, Any]] = []
    shard_of: list[int] = []
    for k, shard in enumerate(shards):
        names = pq.ParquetFile(shard).schema_arrow.names
        part = pq.read_table(shard, columns=[c for c in VERIFY_COLUMNS if c in names]).to_pylist()
        rows.extend(part)
        shard_of.extend([k] * len(part))
    log.info("filter: %d records from %d shards of %s", len(rows), len(shards), gen_dir)
    result = filter_records(rows, cfg.filter, show_progress=show_progress)

    t0 = time.time()
    offset = 0
    for k, shard in enumerate(shards):
        table = pq.read_table(shard)
        features = Dataset(table).features  # keep the input's schema (soft-label width included)
        # ...except verdicts: an input written without explicit features has `[]` inferred as null.
        features["verdicts"] = record_features()["verdicts"]
        kept, rejected = [], []
        for j, row in enumerate(table.to_pylist()):
            i = offset + j
            (kept if result.kept[i] else rejected).append(_annotate(row, result.verdicts[i]))
        offset += table.num_rows
        if kept:
            out.write_shard(k, kept, features)
        if rejected and cfg.filter.write_rejected:
            from distillkit.records import write_shard

            write_shard(out_dir / REJECTED, k, rejected, features)
    result.timings["write_s"] = round(time.time() - t0, 3)

    n_kept = sum(result.kept)
    counts = {"input": len(rows), "kept": n_kept, "rejected": len(rows) - n_kept,
              "prompts_input": len({r["prompt_id"] for r in rows}),
              "prompts_kept": len({r["prompt_id"] for r, k in zip(rows, result.kept) if k})}
    log.info("filter: kept %d of %d records", n_kept, len(rows))
    return out.finish(counts=counts, stats=result.stats, timings=result.timings,
                      versions=["distillkit", "datasets", "pyarrow", "math_verify"])


def funnel_table(manifest: Manifest | None):
    """A rich Table of the funnel (step, in, rejected, out, top reasons) and pass rate per source."""
    from rich.table import Table

    table = Table(title="filter funnel")
    for col, just in (("step", "left"), ("in", "right"), ("rejected", "right"), ("out", "right"),
                      ("rejection reasons", "left"), ("cannot judge", "left")):
        table.add_column(col, justify=just)
    stats = FilterStats.of(manifest)
    if stats is None:
        return table

    def listed(counts: dict) -> str:
        return ", ".join(f"{r} {c}" for r, c in sorted(counts.items(), key=lambda kv: -kv[1]))

    for row in stats.funnel:
        table.add_row(row.step, str(row.in_), str(row.rejected), str(row.out),
                      listed(stats.counts(row.step, "rejected")), listed(stats.counts(row.step, "cannot_judge")))
    for src, s in stats.sources.items():
        table.add_row(f"source {src or '-'}", str(s.records), "", str(s.kept),
                      f"pass rate {s.pass_rate:.1%} ({s.passed_verifiers}/{s.records}); "
                      f"prompts kept {s.prompts_kept}/{s.prompts}", "")
    return table
