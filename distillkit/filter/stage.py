"""The filter stage: verify every trace, drop duplicates and contaminated prompts, select per prompt.

Reads `<run>/generate`, writes kept records to `<run>/filter` and rejected ones to
`<run>/filter/rejected` (same shard numbering as the input), in three passes that never hold more
than one shard of records:

  1. per shard (distillkit/filter/shards.py): decontamination and the verifier chain; each shard's
     verdicts and small keys go to `<run>/filter/.work/judged-NNNNN.parquet`. It runs in this process
     or on datatrove's executors (distillkit/filter/executors.py); finished shards are skipped on rerun.
  2. once, over the keys only (distillkit/filter/decide.py): exact and near dedup, pass rates and
     selection per prompt.
  3. per shard again (distillkit/filter/write.py): the input records, their verdicts appended, split
     into kept and rejected shards (Arrow batches: soft labels are copied as buffers, never turned into
     Python lists).

Every record carries the verdicts of every step that judged it in its `verdicts` column; the manifest's
`stats` hold the funnel, the reasons and the per-source pass rates (`distillkit/schemas/filter.py`).
The funnel as text for people (the CLI's table, the error when nothing is kept) is distillkit/filter/funnel.py.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.config import FilterConfig, RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.filter.decide import decide, keys_from_memory, keys_from_work
from distillkit.filter.funnel import check_kept, funnel_lines, funnel_table  # noqa: F401  (their old home)
from distillkit.filter.shards import judged_path, read_judged_meta
from distillkit.filter.write import REJECTED, write_shard_outputs
from distillkit.records import Manifest, StageOutput, list_shards, read_manifest
from distillkit.stage_hash import stage_config_hash
from distillkit.verify.chain import Judge, Tally
from distillkit.verify.verifiers.base import Verdict

log = logging.getLogger(__name__)

WORK = ".work"


# ----------------------------------------------------------------------------------------- in memory


@dataclass
class FilterResult:
    """Per-record verdicts (step name, Verdict) in step order, the kept mask, and the funnel stats."""

    verdicts: list[list[tuple[str, Verdict]]]
    kept: list[bool]
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def filter_records(records: Sequence[dict[str, Any]], cfg: FilterConfig, show_progress: bool = True) -> FilterResult:
    """Judge `records` (dicts with at least verify.VERIFY_COLUMNS) with the whole chain of `cfg`, in memory.

    The same steps as the stage (one shard holding every record); for lists that fit in memory."""
    with Judge(cfg) as judge:
        tally = Tally(steps=judge.all_steps())
        judged = judge.judge(list(records), tally)
        tally.verifiers = judge.usage()
    keys = keys_from_memory(records, judged)
    d = decide(keys, tally, cfg)
    verdicts = [judged.verdicts[i] + d.verdicts_of(i, keys.ids) for i in range(len(records))]
    return FilterResult(verdicts=verdicts, kept=d.kept.tolist(), stats=d.stats, timings=d.timings)


# ----------------------------------------------------------------------------------------- stage


def run_filter(cfg: RecipeConfig, overwrite: bool = False, show_progress: bool = True) -> Manifest | None:
    """Run the filter stage of `cfg`; returns the manifest (the existing one if already complete).

    With `filter.executor.kind: slurm` the jobs are submitted and None is returned; the second job
    finishes the stage (or rerun this when the first is done)."""
    import pyarrow as pa

    from distillkit.filter.executors import verify_all

    gen_dir, out_dir = cfg.stage_dir("generate"), cfg.stage_dir("filter")
    gen_manifest = read_manifest(gen_dir)
    if gen_manifest is None:
        raise DistillkitError(f"{gen_dir} has no finished generate output (no manifest.json); "
                              "run `distillkit generate` first")
    out = StageOutput(out_dir, "filter", stage_config_hash(cfg, "filter"), cfg.filter.model_dump(mode="json"),
                      inputs={str(gen_dir): gen_manifest.config_hash})
    if not overwrite and out.is_complete():
        return out.manifest()
    for spec in (s for chain in cfg.filter.chains().values() for s in chain):
        if spec.kind == "code":  # refuse unisolated code here, before any executor task starts
            from distillkit.verify.sandbox import require_isolation

            require_isolation(bool(spec.params.get("allow_unisolated", False)))
    for line in unrouted_source_chains(cfg):
        log.warning("filter: %s", line)
    out.begin(overwrite=overwrite)
    work = out_dir / WORK
    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out_dir / REJECTED, ignore_errors=True)
    shards = list_shards(gen_dir)

    # 1. per shard, wherever the executor runs it; finished shards are skipped
    t0 = time.time()
    redone = verify_all(cfg, shards, work, out.config_hash, FinishFilter(cfg.model_dump(mode="json")),
                        show_progress=show_progress)
    if redone is None:  # submitted to a scheduler
        return None
    verify_s = round(time.time() - t0, 3)
    if redone:  # written outputs (if any) came from other verdicts: rewrite every shard
        for p in [*list_shards(out_dir), *list_shards(out_dir / REJECTED), *work.glob("written-*")]:
            p.unlink()
    return finish_filter(cfg, out, shards, work, verify_s)


def unrouted_source_chains(cfg: RecipeConfig) -> list[str]:
    """A line per `filter.source_verifiers` source that no teacher of `generate.teachers` lists (with no catch-all
    teacher): unless imported records carry that source, its chain judges nothing."""
    gen = cfg.generate
    if not gen.teachers or any(not t.sources for t in gen.teachers):
        return []
    routed = {s for t in gen.teachers for s in t.sources}
    return [f"filter.source_verifiers.{src}: no teacher of generate.teachers lists source {src!r} "
            f"(routed: {sorted(routed)}); its chain judges only records of that source, if any"
            for src in cfg.filter.source_verifiers if src not in routed]


class FinishFilter:
    """A datatrove step for the scheduler's last job: dedup, selection and writing, once."""

    def __init__(self, recipe: dict[str, Any]):
        self.recipe = recipe

    def __repr__(self) -> str:
        return "distillkit filter: dedup, selection and writing"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        cfg = RecipeConfig.model_validate(self.recipe)
        cfg.filter.executor.kind = "inline"  # every shard is judged by now; this only checks and finishes
        run_filter(cfg, show_progress=False)
        return None


def finish_filter(cfg: RecipeConfig, out: StageOutput, shards: list[Path], work: Path, verify_s: float = 0.0) -> Manifest:
    """Passes 2 and 3 over finished judged files: dedup and selection, then the kept and rejected shards."""
    out_dir = out.folder
    fcfg = cfg.filter
    metas = [read_judged_meta(judged_path(work, k)) for k in range(len(shards))]
    missing = [shards[k].name for k, m in enumerate(metas) if m is None]
    if missing:
        raise DistillkitError(f"filter: shards {missing} of {shards[0].parent} have not been verified; "
                              "rerun `distillkit filter`")
    tally = Tally(steps=metas[0]["tally"]["steps"] if metas else [])
    for m in metas:
        tally.add(Tally.from_json(m["tally"]))
    from distillkit.verify.dedup import lsh_bands

    bands = lsh_bands(fcfg.dedup.near.threshold, fcfg.dedup.near.num_perm)[0] if fcfg.dedup.near.enabled else 0
    keys = keys_from_work(work, len(shards), bands)
    log.info("filter: %d records from %d shards", len(keys), len(shards))
    d = decide(keys, tally, fcfg)

    from distillkit.filter.executors import records_progress

    t0 = time.time()
    offsets = np.cumsum([0] + [m["rows"] for m in metas])
    progress = records_progress() if len(shards) > 1 else None
    task = progress.add_task("filter: write", total=len(shards)) if progress else None
    if progress:
        progress.start()
    try:
        for k, shard in enumerate(shards):
            marker = work / f"written-{k:05d}"
            if not marker.exists():
                write_shard_outputs(shard, k, work, out_dir, int(offsets[k]), d, keys.ids, fcfg.write_rejected)
                marker.touch()
            if progress:
                progress.advance(task)
    finally:
        if progress:
            progress.stop()
    # verify_s: the verification pass as the caller saw it (executor and verifier start-up included);
    # verify_span_s: from the first shard's start to the last shard's end (the work itself)
    span = max(m["finished"] for m in metas) - min(m["started"] for m in metas) if metas else 0.0
    timings = {**d.timings, "verify_s": verify_s, "verify_span_s": round(span, 3), "write_s": round(time.time() - t0, 3)}

    n, n_kept = len(keys), int(d.kept.sum())
    counts = {"input": n, "kept": n_kept, "rejected": n - n_kept,
              "prompts_input": int(len(np.unique(keys.prompt))),
              "prompts_kept": int(len(np.unique(keys.prompt[d.kept])))}
    log.info("filter: kept %d of %d records", n_kept, n)
    manifest = out.finish(counts=counts, stats=d.stats, timings=timings,
                          versions=["distillkit", "datasets", "pyarrow", "math_verify", "datatrove"])
    shutil.rmtree(work, ignore_errors=True)
    return manifest
