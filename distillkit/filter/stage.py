"""The filter stage: verify every trace, drop duplicates and contaminated prompts, select per prompt.

Reads `<run>/generate`, writes kept records to `<run>/filter` and rejected ones to
`<run>/filter/rejected` (same shard numbering as the input), in three passes that never hold more
than one shard of records:

  1. per shard (distillkit/filter/shards.py): decontamination and the verifier chain; each shard's
     verdicts and small keys go to `<run>/filter/.work/judged-NNNNN.parquet`. It runs in this process
     or on datatrove's executors (distillkit/filter/executors.py); finished shards are skipped on rerun.
  2. once, over the keys only: exact and near dedup, pass rates and selection per prompt.
  3. per shard again: the input records, their verdicts appended, split into kept and rejected shards
     (Arrow batches: soft labels are copied as buffers, never turned into Python lists).

Every record carries the verdicts of every step that judged it in its `verdicts` column; the manifest's
`stats` hold the funnel, the reasons and the per-source pass rates (`distillkit/schemas/filter.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.config import FilterConfig, RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.filter.shards import judged_path, read_judged_meta
from distillkit.records import Manifest, StageOutput, list_shards, read_manifest
from distillkit.schemas.filter import FilterStats
from distillkit.stage_hash import stage_config_hash
from distillkit.verify.chain import OUTCOME_OF, Judge, Judged, Tally
from distillkit.verify.verifiers.base import Verdict

log = logging.getLogger(__name__)

REJECTED = "rejected"
WORK = ".work"


# ----------------------------------------------------------------------------------------- keys


@dataclass
class Keys:
    """What the global steps hold per record (all records of the run, in shard and row order)."""

    ids: Any                    # pyarrow string array (for "of <id>" details)
    prompt: np.ndarray          # int64 prompt codes
    prompt_names: Any           # pyarrow string array: code -> prompt id
    source: np.ndarray          # int64 source codes
    source_names: list[str]
    sample_index: np.ndarray
    order_len: np.ndarray
    alive: np.ndarray           # after the per-record steps
    passed_verifiers: np.ndarray
    exact: np.ndarray           # (N, 2) uint64
    bands: np.ndarray           # (N, bands) uint64 (0 columns without near dedup)
    signatures: Callable[[list[int]], dict[int, np.ndarray]]

    def __len__(self) -> int:
        return len(self.prompt)


def _codes(array) -> tuple[np.ndarray, Any]:
    import pyarrow as pa

    enc = array.dictionary_encode() if len(array) else pa.array([], pa.string()).dictionary_encode()
    return np.asarray(enc.indices, dtype=np.int64), enc.dictionary


def _fixed(column, width: int, dtype) -> np.ndarray:
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return np.asarray(arr.values, dtype=dtype).reshape(-1, width) if width else np.zeros((len(arr), 0), dtype)


def keys_from_work(work: Path, count: int, bands: int) -> Keys:
    """Read the keys of `count` judged shard files (not their verdicts or signatures)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["id", "prompt_id", "source", "sample_index", "order_len", "alive", "passed_verifiers", "exact"]
    cols += ["bands"] if bands else []
    tables = [pq.read_table(judged_path(work, k), columns=cols) for k in range(count)]
    offsets = np.cumsum([0] + [t.num_rows for t in tables])
    t = pa.concat_tables(tables) if tables else None

    def col(name):
        return t.column(name).combine_chunks() if t is not None else pa.array([], pa.string())

    prompt, prompt_names = _codes(col("prompt_id"))
    source, source_names = _codes(col("source"))

    def signatures(wanted: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        wanted_arr = np.asarray(sorted(wanted), dtype=np.int64)
        shard_of = np.searchsorted(offsets, wanted_arr, side="right") - 1
        for k in np.unique(shard_of):
            rows = wanted_arr[shard_of == k]
            sig = pq.read_table(judged_path(work, int(k)), columns=["signature"]).column("signature").combine_chunks()
            width = sig.type.list_size
            values = np.asarray(sig.values, dtype=np.uint32).reshape(-1, width)
            for i in rows:
                out[int(i)] = values[i - offsets[k]].copy()
        return out

    n = int(offsets[-1])
    return Keys(ids=col("id"), prompt=prompt, prompt_names=prompt_names, source=source,
                source_names=[str(s) for s in source_names.to_pylist()],
                sample_index=np.asarray(col("sample_index") if t is not None else [], dtype=np.int64),
                order_len=np.asarray(col("order_len") if t is not None else [], dtype=np.int64),
                alive=np.asarray(col("alive") if t is not None else [], dtype=bool),
                passed_verifiers=np.asarray(col("passed_verifiers") if t is not None else [], dtype=bool),
                exact=_fixed(col("exact"), 2, np.uint64) if t is not None else np.zeros((0, 2), np.uint64),
                bands=_fixed(col("bands"), bands, np.uint64) if t is not None and bands else np.zeros((n, 0), np.uint64),
                signatures=signatures)


def keys_from_memory(records: Sequence[dict[str, Any]], j: Judged) -> Keys:
    import pyarrow as pa

    prompt, prompt_names = _codes(pa.array([r["prompt_id"] for r in records], pa.string()))
    source, source_names = _codes(pa.array([r.get("source") or "" for r in records], pa.string()))
    sigs = j.signatures
    return Keys(ids=pa.array([r["id"] for r in records], pa.string()), prompt=prompt, prompt_names=prompt_names,
                source=source, source_names=[str(s) for s in source_names.to_pylist()],
                sample_index=np.array([r.get("sample_index") or 0 for r in records], dtype=np.int64),
                order_len=j.order_len, alive=j.alive.copy(), passed_verifiers=j.passed_verifiers, exact=j.exact,
                bands=j.bands if j.bands is not None else np.zeros((len(records), 0), np.uint64),
                signatures=lambda wanted: {i: sigs[i] for i in wanted})


# ----------------------------------------------------------------------------------------- global steps


@dataclass
class Decisions:
    """The global steps' verdicts per record, as small arrays, and the stage's stats."""

    kept: np.ndarray
    dedup: np.ndarray          # int8: -1 not compared, 0 unique, 1 exact, 2 near duplicate
    dup_of: np.ndarray         # int64: the kept copy's record index
    selection: np.ndarray      # int32: -1 not a candidate, else an index into `selection_verdicts`
    selection_verdicts: list[Verdict]
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    pass_rate: np.ndarray | None = None  # float32: the record's prompt's teacher pass rate

    def verdicts_of(self, i: int, ids) -> list[tuple[str, Verdict]]:
        out = []
        d = self.dedup[i]
        if d >= 0:
            out.append(("dedup", Verdict(True, "unique") if d == 0 else
                        Verdict(False, "exact_duplicate" if d == 1 else "near_duplicate",
                                f"of {ids[int(self.dup_of[i])].as_py()}")))
        if self.selection[i] >= 0:
            out.append(("selection", self.selection_verdicts[self.selection[i]]))
        return out


class _Rows:
    """`records[i]` as the selection functions read it, built from the keys on demand."""

    def __init__(self, keys: Keys):
        self.k = keys

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prompt_id": int(self.k.prompt[i]), "sample_index": int(self.k.sample_index[i]),
                "completion_tokens": int(self.k.order_len[i])}


_DEDUP_CODE = {"exact_duplicate": 1, "near_duplicate": 2}


def pass_rate_stats(good: np.ndarray, total: np.ndarray) -> dict[str, Any]:
    """Per-prompt teacher pass rates (verifier passes over samples): how many prompts at each rate, the mean,
    and the prompts the teacher never / always solves (what a difficulty band would drop)."""
    have = total > 0
    rates = good[have] / total[have]
    values, counts = np.unique(np.round(rates, 4), return_counts=True)
    return {"prompts": int(have.sum()), "mean": round(float(rates.mean()), 4) if len(rates) else 0.0,
            "never": int((good[have] == 0).sum()), "always": int((good[have] == total[have]).sum()),
            "histogram": {f"{v:g}": int(c) for v, c in zip(values, counts)}}


def cannot_judge_warnings(outcomes: dict[str, dict[str, Counter]], cfg: FilterConfig) -> list[str]:
    """One line per verifier that could not judge more than `filter.warn_cannot_judge` of the records it saw."""
    from distillkit.verify.chain import step_names
    from distillkit.verify.verifiers.base import DEFERRED

    out = []
    for i, (step, spec) in enumerate(zip(step_names(cfg), cfg.verifiers)):
        counts = outcomes.get(step, {})
        seen = sum(sum(dict(c).values()) for c in counts.values())
        unjudged = Counter({r: c for r, c in (counts.get("cannot_judge") or {}).items() if r not in DEFERRED})
        n = sum(unjudged.values())
        if seen and n / seen > cfg.warn_cannot_judge:
            top = ", ".join(f"{r} {c}" for r, c in unjudged.most_common(3))
            fate = "rejected" if spec.rejects_unjudged else "kept"
            out.append(f"{step} could not judge {n} of {seen} records ({n / seen:.0%}: {top}); they were {fate} "
                       f"(filter.verifiers[{i}].on_cannot_judge). Check the verifier's inputs and settings")
    return out


def decide(keys: Keys, tally: Tally, cfg: FilterConfig) -> Decisions:
    """Dedup and selection over all records' keys, and the funnel/reasons/sources stats."""
    from distillkit.filter.selection import rule_counts, select

    n = len(keys)
    alive = keys.alive.copy()
    funnel = [{"step": "input", "in": n, "rejected": 0, "out": n}]
    funnel += [{"step": s, "in": row[0], "rejected": row[1], "out": row[2]}
               for s in tally.steps if (row := tally.funnel.get(s)) is not None]
    outcomes = {s: tally.outcomes[s] for s in tally.steps if s in tally.outcomes}
    timings = dict(tally.timings)

    def record_step(step: str, rejected: np.ndarray, reasons: Counter, passes: Counter) -> None:
        before = int(alive.sum())
        alive[rejected] = False
        funnel.append({"step": step, "in": before, "rejected": before - int(alive.sum()), "out": int(alive.sum())})
        outcomes[step] = {"rejected": reasons, "passed": passes, "cannot_judge": Counter()}

    dedup = np.full(n, -1, dtype=np.int8)
    dup_of = np.full(n, -1, dtype=np.int64)
    if cfg.dedup.exact or cfg.dedup.near.enabled:
        from distillkit.verify.dedup import DedupKeys, duplicates

        t0 = time.time()
        candidates = np.flatnonzero(alive)
        group = keys.prompt if cfg.dedup.scope == "prompt" else np.zeros(n, dtype=np.int64)
        found = duplicates(DedupKeys(group=group, exact=keys.exact, bands=keys.bands), candidates, cfg.dedup,
                           keys.signatures)
        dedup[candidates] = 0
        for i, (reason, j) in found.items():
            dedup[i], dup_of[i] = _DEDUP_CODE[reason], j
        rejected = np.array(sorted(found), dtype=np.int64)
        record_step("dedup", rejected, Counter(r for r, _ in found.values()),
                    Counter({"unique": len(candidates) - len(found)} if len(candidates) > len(found) else {}))
        timings["dedup_s"] = round(time.time() - t0, 3)

    t0 = time.time()
    total = np.bincount(keys.prompt, minlength=len(keys.prompt_names)) if n else np.zeros(0)
    good = np.bincount(keys.prompt, weights=keys.passed_verifiers, minlength=len(keys.prompt_names)) if n else np.zeros(0)
    prompt_rate = np.divide(good, total, out=np.zeros(len(total)), where=total > 0)
    rates = {p: prompt_rate[p] for p in np.flatnonzero(total)}
    record_rate = prompt_rate[keys.prompt].astype(np.float32) if n else np.zeros(0, np.float32)
    candidates = np.flatnonzero(alive)
    rows = _Rows(keys)
    dropped = select(rows, candidates.tolist(), rates, cfg.selection, name=lambda p: keys.prompt_names[p].as_py())
    table: dict[Verdict, int] = {}
    selection = np.full(n, -1, dtype=np.int32)
    selected = Verdict(True, "selected")
    for i in candidates:
        v = dropped.get(int(i), selected)
        selection[i] = table.setdefault(v, len(table))
    record_step("selection", np.array(sorted(dropped), dtype=np.int64), Counter(v.reason for v in dropped.values()),
                Counter({"selected": len(candidates) - len(dropped)} if len(candidates) > len(dropped) else {}))
    by_rule = rule_counts(rows, candidates.tolist(), dropped)
    timings["selection_s"] = round(time.time() - t0, 3)

    sources = {}
    for s, name in enumerate(keys.source_names):
        mine = keys.source == s
        records = int(mine.sum())
        passed = int(keys.passed_verifiers[mine].sum())
        sources[name] = {"records": records, "passed_verifiers": passed, "kept": int(alive[mine].sum()),
                         "pass_rate": round(passed / records, 4) if records else 0.0,
                         "prompts": len(np.unique(keys.prompt[mine])),
                         "prompts_kept": len(np.unique(keys.prompt[mine & alive]))}
    warnings = cannot_judge_warnings(outcomes, cfg)
    for w in warnings:
        log.warning("filter: %s", w)
    stats = FilterStats(funnel=funnel, warnings=warnings, pass_rates=pass_rate_stats(good, total), selection=by_rule,
                        reasons={k: dict(sorted(sum(v.values(), Counter()).items())) for k, v in outcomes.items()},
                        outcomes={k: {o: dict(sorted(v.get(o, Counter()).items())) for o in OUTCOME_OF.values()}
                                  for k, v in outcomes.items()},
                        sources=dict(sorted(sources.items())), verifiers=tally.verifiers).dump()
    return Decisions(kept=alive, dedup=dedup, dup_of=dup_of, selection=selection,
                     selection_verdicts=list(table), stats=stats, timings=timings, pass_rate=record_rate)


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


# ----------------------------------------------------------------------------------------- writing


def _annotate_batch(batch, judged_verdicts: list[list[dict]], extra: list[list[tuple[str, Verdict]]], verdict_type):
    """`batch` with the filter's verdicts appended to `verdicts` and non-pass details put in `meta`."""
    import pyarrow as pa

    names = batch.schema.names
    old_verdicts = batch.column("verdicts").to_pylist() if "verdicts" in names else [None] * batch.num_rows
    old_meta = batch.column("meta").to_pylist() if "meta" in names else [None] * batch.num_rows
    verdicts, metas = [], []
    for row_verdicts, meta, judged, more in zip(old_verdicts, old_meta, judged_verdicts, extra):
        entries = [(v["step"], v["passed"], v["reason"], v["detail"]) for v in judged]
        entries += [(s, v.passed, v.reason, v.detail if v.passed is not True else "") for s, v in more]
        verdicts.append(list(row_verdicts or []) + [{"verifier": s, "passed": p, "reason": r} for s, p, r, _ in entries])
        details = {s: d for s, p, r, d in entries if d and p is not True}
        if details:  # the record schema's verdict entries have no detail field; keep it readable in `meta`
            try:
                parsed = json.loads(meta or "{}")
            except json.JSONDecodeError:
                parsed = {"original_meta": meta}
            parsed["filter_details"] = details
            meta = json.dumps(parsed, ensure_ascii=False)
        metas.append(meta if meta is not None else "{}")
    arrays = {name: batch.column(name) for name in names}
    arrays["verdicts"] = pa.array(verdicts, verdict_type)
    arrays["meta"] = pa.array(metas, pa.string())
    return arrays


class _ShardWriter:
    """Writes one output shard batch by batch to a temporary file (`records.atomic_path`); `commit` renames it
    into place, `abort` removes it. A shard with no rows gets no file."""

    def __init__(self, final: Path, schema):
        self.final, self.schema = final, schema
        self.writer = None
        self.rows = 0
        self._file = contextlib.ExitStack()

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        from distillkit.records import atomic_path, parquet_options

        if table.num_rows == 0:
            return
        if self.writer is None:
            tmp = self._file.enter_context(atomic_path(self.final))
            self.writer = pq.ParquetWriter(tmp, self.schema, **parquet_options(self.schema))
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._file.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            err = RuntimeError("aborted")
            self._file.__exit__(type(err), err, None)  # atomic_path removes the temporary file


PASS_RATE = "teacher_pass_rate"
"""Output column: the share of the record's prompt's samples that passed the verifiers."""


def _output_schema(pf):
    """The input's schema (soft-label width included) with `verdicts` typed as the record schema's, and the
    prompt's teacher pass rate."""
    from datasets import Features, Value

    from distillkit.records import record_features

    features = Features.from_arrow_schema(pf.schema_arrow)
    features["verdicts"] = record_features()["verdicts"]  # an input written without features has `[]` as null
    if "meta" not in features:
        features["meta"] = record_features()["meta"]
    features[PASS_RATE] = Value("float32")
    return features.arrow_schema


def write_shard_outputs(source: Path, index: int, work: Path, out_dir: Path, offset: int, d: Decisions, ids,
                        write_rejected: bool) -> tuple[int, int]:
    """Split input shard `index` into kept and rejected output shards; returns (kept, rejected) counts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from distillkit.filter.shards import open_shard
    from distillkit.records import rows_per_batch, shard_path

    pf = open_shard(source)
    schema = _output_schema(pf)
    verdict_type = schema.field("verdicts").type
    judged = pq.read_table(judged_path(work, index), columns=["verdicts"]).column("verdicts").to_pylist()
    kept_w = _ShardWriter(shard_path(out_dir, index), schema)
    rej_w = _ShardWriter(shard_path(out_dir / REJECTED, index), schema)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=rows_per_batch(pf)):  # ~16 MB per batch and row group
            n = batch.num_rows
            rows = range(offset + row, offset + row + n)
            arrays = _annotate_batch(batch, judged[row:row + n], [d.verdicts_of(i, ids) for i in rows], verdict_type)
            if d.pass_rate is not None:
                arrays[PASS_RATE] = pa.array(d.pass_rate[offset + row: offset + row + n], pa.float32())
            table = pa.table([arrays.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema.remove_metadata())
            table = table.cast(schema)
            mask = pa.array(d.kept[offset + row: offset + row + n])
            kept_w.write(table.filter(mask))
            if write_rejected:
                rej_w.write(table.filter(pc.invert(mask)))
            row += n
        rej_w.commit()
        kept_w.commit()
    except BaseException:
        kept_w.abort()
        rej_w.abort()
        raise
    return kept_w.rows, row - kept_w.rows


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
    for spec in cfg.filter.verifiers:  # refuse unisolated code here, before any executor task starts
        if spec.kind == "code":
            from distillkit.verify.sandbox import require_isolation

            require_isolation(bool(spec.params.get("allow_unisolated", False)))
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


def funnel_lines(stats: FilterStats) -> list[str]:
    """The funnel as plain lines (for an error message): step, records in -> out, the top rejection reasons."""
    lines = []
    for row in stats.funnel:
        top = sorted(stats.counts(row.step, "rejected").items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"  {row.step:<16} {row.in_:>8} -> {row.out:<8} {', '.join(f'{r} {c}' for r, c in top)}")
    if sel := stats.selection:
        rules = ", ".join(f"{r} {c['prompts']}" for r, c in sel["rules"].items() if c["prompts"])
        lines.append(f"  {'prompts':<16} {sel['prompts_in']:>8} -> {sel['prompts_out']:<8} {rules}")
    return lines


def check_kept(manifest: Manifest) -> None:
    """Stop (before training on nothing) when the filter kept no record, with the funnel and the keys to look at."""
    if manifest.counts.get("kept", 1) > 0:
        return
    stats = FilterStats.of(manifest)
    lines = funnel_lines(stats) if stats is not None else []
    sel = stats.selection if stats is not None else {}
    if sel and sel.get("prompts_in", 0) > 0:
        fix = ("the selection removed every prompt: widen filter.selection.min_pass_rate / max_pass_rate, raise "
               "filter.selection.bin_shares, or check the pass rates above (`distillkit report`)")
    else:
        fix = ("no trace passed the verifiers: check the top rejection reasons above and the verifiers' settings "
               "(filter.verifiers), or generate more samples (generate.sampling.n)")
    raise DistillkitError("filter kept 0 of {} records, nothing to train on; {}:\n{}".format(
        manifest.counts.get("input", 0), fix, "\n".join(lines)))


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

    sel = stats.selection
    for row in stats.funnel:
        table.add_row(row.step, str(row.in_), str(row.rejected), str(row.out),
                      listed(stats.counts(row.step, "rejected")), listed(stats.counts(row.step, "cannot_judge")))
        if row.step == "selection" and sel:
            table.add_row("  prompts", str(sel["prompts_in"]), str(sel["prompts_in"] - sel["prompts_out"]),
                          str(sel["prompts_out"]), listed({r: c["prompts"] for r, c in sel["rules"].items() if c["prompts"]}), "")
    pr = stats.pass_rates
    if pr:
        table.add_row("prompts by teacher pass rate", str(pr["prompts"]), "", "",
                      ", ".join(f"{float(r):.0%}: {c}" for r, c in sorted(pr["histogram"].items(),
                                                                         key=lambda kv: float(kv[0]))),
                      f"never solved {pr['never']}, always {pr['always']}")
    for src, s in stats.sources.items():
        table.add_row(f"source {src or '-'}", str(s.records), "", str(s.kept),
                      f"pass rate {s.pass_rate:.1%} ({s.passed_verifiers}/{s.records}); "
                      f"prompts kept {s.prompts_kept}/{s.prompts}", "")
    return table
