"""Where the filter's per-shard work runs: in this process, or as a map over the shards on datatrove.

Why datatrove (and not Ray Data): it is Hugging Face's engine for exactly this shape of job (FineWeb's
filters and dedup: independent tasks over Parquet shards, then a global step), it installs in seconds
with no cluster runtime, and the same pipeline runs on a laptop (LocalPipelineExecutor, processes),
on Slurm (SlurmPipelineExecutor, an array job, the usual HPC scheduler of the clusters that distil
models) and on Ray. Our unit of work stays the shard: each task verifies its share of the shards and
writes one judged file per shard, so a killed task, node or run loses at most the shards in flight,
and the next run skips every shard whose judged file is complete.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

from distillkit.config import FilterConfig, RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.filter.shards import ShardError, is_judged, judged_path, verify_shard
from distillkit.verify.chain import Judge

log = logging.getLogger(__name__)


def _failure_path(work: Path, index: int) -> Path:
    return work / f"failed-{index:05d}.txt"


def _verify_many(shards: list[Path], indices: list[int], work: Path, fcfg: FilterConfig, config_hash: str,
                 on_done=None) -> None:
    """Verify the listed shards in this process; an unreadable one is recorded and the others go on."""
    from distillkit.records import atomic_write_text

    if not indices:
        return
    with Judge(fcfg) as judge:
        for k in indices:
            try:
                verify_shard(shards[k], k, work, judge, config_hash, on_done)
            except ShardError as e:
                atomic_write_text(_failure_path(work, k), str(e))


class VerifyShards:
    """A datatrove pipeline step: task `rank` of `world_size` verifies every world_size-th pending shard.

    Plain data only (paths, the filter config as JSON), so executors can pickle it to other machines."""

    def __init__(self, shards: list[str], todo: list[int], work: str, filter_config: dict[str, Any], config_hash: str):
        self.shards, self.todo, self.work = shards, todo, work
        self.filter_config, self.config_hash = filter_config, config_hash

    def __repr__(self) -> str:  # datatrove logs the pipeline
        return f"distillkit filter: verify {len(self.todo)} shards into {self.work}"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        fcfg = FilterConfig.model_validate(self.filter_config)
        shards = [Path(s) for s in self.shards]
        mine = [k for k in self.todo[rank::world_size]
                if not is_judged(Path(self.work), k, shards[k], self.config_hash)]  # resumed task: skip finished
        _verify_many(shards, mine, Path(self.work), fcfg, self.config_hash)
        return None


def records_progress():
    """A transient progress bar counting records (shards judged, outputs written)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from distillkit.progress import progress_bar

    return progress_bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), transient=True, unit="records")


def _watch(work: Path, todo: list[int], progress, task) -> threading.Event:
    """Advance a progress bar as judged files appear (the executor's processes write them)."""
    stop = threading.Event()

    def loop():
        seen = 0
        while not stop.wait(0.5):
            done = sum(judged_path(work, k).exists() or _failure_path(work, k).exists() for k in todo)
            if done > seen:
                progress.advance(task, done - seen)
                seen = done

    threading.Thread(target=loop, daemon=True).start()
    return stop


def verify_all(cfg: RecipeConfig, shards: list[Path], work: Path, config_hash: str, finish: Any,
               show_progress: bool = True) -> list[int] | None:
    """Judge every shard that has no finished judged file; returns the shards done now.

    None means the work was submitted to a scheduler (slurm) and goes on without us: `finish` (a datatrove
    step, the filter stage's FinishFilter) then runs as the last job, once every shard is judged."""
    ex = cfg.filter.executor
    todo = _shards_to_judge(shards, work, config_hash)
    if not todo:
        return []

    progress = records_progress() if show_progress else None
    if ex.kind == "inline":
        _verify_inline(cfg, shards, todo, work, config_hash, progress)
    else:
        from distillkit.errors import require

        require("datatrove", "filter", f"filter.executor.kind={ex.kind} runs on datatrove")
        step = VerifyShards([str(s) for s in shards], todo, str(work), cfg.filter.model_dump(mode="json"), config_hash)
        if ex.kind == "slurm":  # default: a task per shard (array tasks are cheap to schedule)
            _submit_slurm(cfg, step, finish, min(ex.tasks or len(todo), len(todo)), work)
            return None
        _run_datatrove_locally(cfg, step, todo, work, progress)
    _raise_failures(shards, todo, work)
    return todo


def _shards_to_judge(shards: list[Path], work: Path, config_hash: str) -> list[int]:
    """The shards without a finished judged file of this config, after clearing what a killed or longer run left
    in `work` (half-written files, judged files past the input's last shard, failure notes of the shards to redo)."""
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob(".tmp-*"):  # half-written judged files of a killed task
        stale.unlink(missing_ok=True)
    for extra in work.glob("judged-*.parquet"):  # the input has fewer shards than last time
        if int(extra.stem.split("-")[1]) >= len(shards):
            extra.unlink()
    todo = [k for k, s in enumerate(shards) if not is_judged(work, k, s, config_hash)]
    if todo and len(todo) < len(shards):
        log.info("filter: %d of %d shards already verified; verifying the other %d", len(shards) - len(todo),
                 len(shards), len(todo))
    for k in todo:
        _failure_path(work, k).unlink(missing_ok=True)
    return todo


def _verify_inline(cfg: RecipeConfig, shards: list[Path], todo: list[int], work: Path, config_hash: str,
                   progress) -> None:
    """Judge the `todo` shards in this process, the bar counting records."""
    import pyarrow.parquet as pq

    total = 0
    for k in todo:
        try:
            total += pq.ParquetFile(shards[k]).metadata.num_rows
        except Exception:  # reported by name when its turn comes
            pass
    task = progress.add_task("filter: verify", total=total) if progress else None
    if progress:
        progress.start()
    try:
        _verify_many(shards, todo, work, cfg.filter, config_hash,
                     on_done=(lambda n: progress.advance(task, n)) if progress else None)
    finally:
        if progress:
            progress.stop()


def _run_datatrove_locally(cfg: RecipeConfig, step: VerifyShards, todo: list[int], work: Path, progress) -> None:
    """Judge the `todo` shards on datatrove's LocalPipelineExecutor, the bar counting finished shards."""
    from datatrove.executor import LocalPipelineExecutor
    from loguru import logger

    ex = cfg.filter.executor
    # default: a task per worker; each builds its verifiers (math-verify workers) once for its shards
    tasks = min(ex.tasks or ex.workers, len(todo))
    executor = LocalPipelineExecutor(pipeline=[step], tasks=tasks, workers=min(ex.workers, tasks),
                                     logging_dir=str(work / "datatrove"), skip_completed=False)
    if progress:  # the bar says how far it is; datatrove's per-task lines go to its log folder
        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    task = progress.add_task(f"filter: verify ({min(ex.workers, tasks)} datatrove workers)",
                             total=len(todo), unit="shards") if progress else None
    stop = _watch(work, todo, progress, task) if progress else None
    if progress:
        progress.start()
    try:
        executor.run()
    finally:
        if stop:
            stop.set()
        if progress:
            progress.stop()


def _raise_failures(shards: list[Path], todo: list[int], work: Path) -> None:
    failed = [k for k in todo if _failure_path(work, k).exists()]
    missing = [k for k in todo if k not in failed and not judged_path(work, k).exists()]
    if missing:
        raise DistillkitError(f"filter: {len(missing)} shard(s) were not verified ({', '.join(shards[k].name for k in missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}); see the task logs in {work / 'datatrove' / 'logs'}. "
                              "Rerun `distillkit filter`: verified shards are kept.")
    if failed:
        lines = "\n".join(f"  - {_failure_path(work, k).read_text()}" for k in failed)
        gen = shards[0].parent
        raise DistillkitError(
            f"filter: {len(failed)} of {len(shards)} input shards cannot be read:\n{lines}\n"
            f"The other {len(shards) - len(failed)} shards are verified and kept in {work}. Fix: replace the "
            f"broken shard(s) from a good copy, or delete them and {gen / 'manifest.json'}, rerun "
            "`distillkit generate` (it writes only the missing shards), then rerun `distillkit filter`.")


def _submit_slurm(cfg: RecipeConfig, step: VerifyShards, finish_step: Any, tasks: int, work: Path) -> None:
    from datatrove.executor import SlurmPipelineExecutor

    ex = cfg.filter.executor
    common = {"logging_dir": None, "job_name": "distillkit-filter", "skip_completed": False,
              "slurm_logs_folder": str(work / "slurm"), **ex.slurm}
    verify = SlurmPipelineExecutor(pipeline=[step], tasks=tasks, workers=ex.workers,
                                   **{**common, "logging_dir": str(work / "datatrove")})
    finish = SlurmPipelineExecutor(pipeline=[finish_step], tasks=1, depends=verify,
                                   **{**common, "logging_dir": str(work / "datatrove-finish"),
                                      "job_name": "distillkit-filter-finish"})
    finish.run()
    log.warning("filter: submitted %d Slurm task(s) (job %s) and a finishing job (%s); the filter output appears "
                "in %s when they end. Logs: %s", tasks, verify.job_id, finish.job_id, work.parent, work / "slurm")
