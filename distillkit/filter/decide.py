"""Pass 2 of the filter stage, once over every record's keys: exact and near dedup, the teacher's pass rate per
prompt, the selection per prompt, and the funnel / reasons / per-source stats of the manifest."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.config import FilterConfig
from distillkit.filter.shards import judged_path
from distillkit.schemas.filter import FilterStats
from distillkit.verify.chain import OUTCOME_OF, Judged, Tally
from distillkit.verify.verifiers.base import Verdict

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- keys


@dataclass
class Keys:
    """What the global steps hold per record (all records of the run, in shard and row order)."""

    ids: Any                    # pyarrow string array (for "of <id>" details)
    prompt: np.ndarray          # int64 prompt codes
    prompt_names: Any           # pyarrow string array: code -> prompt id
    source: np.ndarray          # int64 source codes
    source_names: list[str]
    teacher: np.ndarray         # int64 teacher codes (records.teacher_name)
    teacher_names: list[str]
    rejected_by: np.ndarray     # object: per record the (step, reason) of the per-record step that rejected it, or None
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

    cols = ["id", "prompt_id", "source", "teacher", "rejected_step", "rejected_reason", "sample_index", "order_len",
            "alive", "passed_verifiers", "exact"]
    cols += ["bands"] if bands else []
    tables = [pq.read_table(judged_path(work, k), columns=cols) for k in range(count)]
    offsets = np.cumsum([0] + [t.num_rows for t in tables])
    t = pa.concat_tables(tables) if tables else None

    def col(name):
        return t.column(name).combine_chunks() if t is not None else pa.array([], pa.string())

    prompt, prompt_names = _codes(col("prompt_id"))
    source, source_names = _codes(col("source"))
    teacher, teacher_names = _codes(col("teacher"))
    rejected_by = _pairs(col("rejected_step").to_pylist(), col("rejected_reason").to_pylist())

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
                source_names=[str(s) for s in source_names.to_pylist()], teacher=teacher,
                teacher_names=[str(s) for s in teacher_names.to_pylist()], rejected_by=rejected_by,
                sample_index=np.asarray(col("sample_index") if t is not None else [], dtype=np.int64),
                order_len=np.asarray(col("order_len") if t is not None else [], dtype=np.int64),
                alive=np.asarray(col("alive") if t is not None else [], dtype=bool),
                passed_verifiers=np.asarray(col("passed_verifiers") if t is not None else [], dtype=bool),
                exact=_fixed(col("exact"), 2, np.uint64) if t is not None else np.zeros((0, 2), np.uint64),
                bands=_fixed(col("bands"), bands, np.uint64) if t is not None and bands else np.zeros((n, 0), np.uint64),
                signatures=signatures)


def _pairs(steps: list, reasons: list) -> np.ndarray:
    out = np.empty(len(steps), dtype=object)
    out[:] = [(s, r) if s is not None else None for s, r in zip(steps, reasons)]
    return out


def keys_from_memory(records: Sequence[dict[str, Any]], j: Judged) -> Keys:
    import pyarrow as pa

    from distillkit.records import teacher_name

    prompt, prompt_names = _codes(pa.array([r["prompt_id"] for r in records], pa.string()))
    source, source_names = _codes(pa.array([r.get("source") or "" for r in records], pa.string()))
    teacher, teacher_names = _codes(pa.array([teacher_name(r) for r in records], pa.string()))
    first = j.rejected_by or [None] * len(records)
    sigs = j.signatures
    return Keys(ids=pa.array([r["id"] for r in records], pa.string()), prompt=prompt, prompt_names=prompt_names,
                source=source, source_names=[str(s) for s in source_names.to_pylist()], teacher=teacher,
                teacher_names=[str(s) for s in teacher_names.to_pylist()],
                rejected_by=_pairs([f[0] if f else None for f in first], [f[1] if f else None for f in first]),
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
    from distillkit.verify.chain import all_step_names, step_specs
    from distillkit.verify.verifiers.base import DEFERRED

    specs = step_specs(cfg)
    out = []
    for step in all_step_names(cfg):
        counts = outcomes.get(step, {})
        seen = sum(sum(dict(c).values()) for c in counts.values())
        unjudged = Counter({r: c for r, c in (counts.get("cannot_judge") or {}).items() if r not in DEFERRED})
        n = sum(unjudged.values())
        if seen and n / seen > cfg.warn_cannot_judge:
            top = ", ".join(f"{r} {c}" for r, c in unjudged.most_common(3))
            fates = {"rejected" if spec.rejects_unjudged else "kept" for _, spec in specs[step]}
            fate = fates.pop() if len(fates) == 1 else "kept or rejected as their chain says"
            keys = ", ".join(f"{key}.on_cannot_judge" for key, _ in specs[step])
            out.append(f"{step} could not judge {n} of {seen} records ({n / seen:.0%}: {top}); they were {fate} "
                       f"({keys}). Check the verifier's inputs and settings")
    return out


@dataclass
class _Funnel:
    """Which records are still in, and the funnel rows and outcome counts of the steps so far."""

    alive: np.ndarray
    rows: list[dict[str, Any]]
    outcomes: dict[str, dict[str, Counter]]

    @classmethod
    def after_shards(cls, keys: Keys, tally: Tally) -> "_Funnel":
        """The funnel as pass 1 (the per-record steps of every shard) left it."""
        n = len(keys)
        rows = [{"step": "input", "in": n, "rejected": 0, "out": n}]
        rows += [{"step": s, "in": row[0], "rejected": row[1], "out": row[2]}
                 for s in tally.steps if (row := tally.funnel.get(s)) is not None]
        return cls(keys.alive.copy(), rows, {s: tally.outcomes[s] for s in tally.steps if s in tally.outcomes})

    def record(self, step: str, rejected: np.ndarray, reasons: Counter, passes: Counter) -> None:
        alive = self.alive
        before = int(alive.sum())
        alive[rejected] = False
        self.rows.append({"step": step, "in": before, "rejected": before - int(alive.sum()), "out": int(alive.sum())})
        self.outcomes[step] = {"rejected": reasons, "passed": passes, "cannot_judge": Counter()}


def _dedup(keys: Keys, cfg: FilterConfig, funnel: _Funnel) -> tuple[np.ndarray, np.ndarray]:
    """Exact and near duplicates among the records still in: (per record: -1 not compared, 0 unique, 1 exact,
    2 near duplicate; the kept copy's index)."""
    from distillkit.verify.dedup import DedupKeys, duplicates

    n = len(keys)
    dedup = np.full(n, -1, dtype=np.int8)
    dup_of = np.full(n, -1, dtype=np.int64)
    candidates = np.flatnonzero(funnel.alive)
    group = keys.prompt if cfg.dedup.scope == "prompt" else np.zeros(n, dtype=np.int64)
    found = duplicates(DedupKeys(group=group, exact=keys.exact, bands=keys.bands), candidates, cfg.dedup,
                       keys.signatures)
    dedup[candidates] = 0
    for i, (reason, j) in found.items():
        dedup[i], dup_of[i] = _DEDUP_CODE[reason], j
    rejected = np.array(sorted(found), dtype=np.int64)
    funnel.record("dedup", rejected, Counter(r for r, _ in found.values()),
                  Counter({"unique": len(candidates) - len(found)} if len(candidates) > len(found) else {}))
    return dedup, dup_of


def _select(keys: Keys, cfg: FilterConfig, funnel: _Funnel, rates: dict) -> tuple[np.ndarray, list[Verdict], dict]:
    """The selection per prompt over the records still in: (per record an index into the verdict table, -1: not a
    candidate; the table; the counts per selection rule)."""
    from distillkit.filter.selection import rule_counts, select

    candidates = np.flatnonzero(funnel.alive)
    rows = _Rows(keys)
    dropped = select(rows, candidates.tolist(), rates, cfg.selection, name=lambda p: keys.prompt_names[p].as_py())
    table: dict[Verdict, int] = {}
    selection = np.full(len(keys), -1, dtype=np.int32)
    selected = Verdict(True, "selected")
    for i in candidates:
        v = dropped.get(int(i), selected)
        selection[i] = table.setdefault(v, len(table))
    funnel.record("selection", np.array(sorted(dropped), dtype=np.int64), Counter(v.reason for v in dropped.values()),
                  Counter({"selected": len(candidates) - len(dropped)} if len(candidates) > len(dropped) else {}))
    return selection, list(table), rule_counts(rows, candidates.tolist(), dropped)


def _final_rejections(keys: Keys, dedup: np.ndarray, selection: np.ndarray, table: list[Verdict]) -> np.ndarray:
    """Per record the (step, reason) that rejected it, the first as the funnel counts it (the per-record steps,
    then dedup, then selection), or None for a kept record."""
    out = keys.rejected_by.copy()
    for i in np.flatnonzero(dedup > 0):
        out[i] = ("dedup", "exact_duplicate" if dedup[i] == 1 else "near_duplicate")
    for i in np.flatnonzero(selection >= 0):
        if table[selection[i]].passed is False:
            out[i] = ("selection", table[selection[i]].reason)
    return out


def _group_stats(keys: Keys, alive: np.ndarray, codes: np.ndarray, names: list[str],
                 rejected_by: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per group (source or teacher): records, verifier passes, kept records, pass rate, prompts, prompts kept,
    and the rejections by step and reason."""
    groups = {}
    for g, name in enumerate(names):
        mine = codes == g
        records = int(mine.sum())
        passed = int(keys.passed_verifiers[mine].sum())
        rejections: dict[str, Counter] = {}
        for pair in rejected_by[mine & ~alive]:
            if pair is not None:
                rejections.setdefault(pair[0], Counter())[pair[1]] += 1
        groups[name] = {"records": records, "passed_verifiers": passed, "kept": int(alive[mine].sum()),
                        "pass_rate": round(passed / records, 4) if records else 0.0,
                        "prompts": len(np.unique(keys.prompt[mine])),
                        "prompts_kept": len(np.unique(keys.prompt[mine & alive])),
                        "rejections": {step: dict(sorted(c.items())) for step, c in rejections.items()}}
    return dict(sorted(groups.items()))


def _teacher_stats(keys: Keys, alive: np.ndarray, rejected_by: np.ndarray) -> dict[str, dict[str, Any]]:
    """`_group_stats` per teacher, each with the prompt sources of its records."""
    out = _group_stats(keys, alive, keys.teacher, keys.teacher_names, rejected_by)
    for t, name in enumerate(keys.teacher_names):
        out[name]["sources"] = sorted(keys.source_names[s] for s in np.unique(keys.source[keys.teacher == t]))
    return out


def decide(keys: Keys, tally: Tally, cfg: FilterConfig) -> Decisions:
    """Dedup and selection over all records' keys, and the funnel/reasons/sources stats."""
    n = len(keys)
    funnel = _Funnel.after_shards(keys, tally)
    timings = dict(tally.timings)
    if cfg.dedup.exact or cfg.dedup.near.enabled:
        t0 = time.time()
        dedup, dup_of = _dedup(keys, cfg, funnel)
        timings["dedup_s"] = round(time.time() - t0, 3)
    else:
        dedup, dup_of = np.full(n, -1, dtype=np.int8), np.full(n, -1, dtype=np.int64)

    t0 = time.time()
    total = np.bincount(keys.prompt, minlength=len(keys.prompt_names)) if n else np.zeros(0)
    good = np.bincount(keys.prompt, weights=keys.passed_verifiers, minlength=len(keys.prompt_names)) if n else np.zeros(0)
    prompt_rate = np.divide(good, total, out=np.zeros(len(total)), where=total > 0)
    rates = {p: prompt_rate[p] for p in np.flatnonzero(total)}
    record_rate = prompt_rate[keys.prompt].astype(np.float32) if n else np.zeros(0, np.float32)
    selection, selection_verdicts, by_rule = _select(keys, cfg, funnel, rates)
    timings["selection_s"] = round(time.time() - t0, 3)

    outcomes = funnel.outcomes
    rejected_by = _final_rejections(keys, dedup, selection, selection_verdicts)
    warnings = cannot_judge_warnings(outcomes, cfg)
    for w in warnings:
        log.warning("filter: %s", w)
    stats = FilterStats(funnel=funnel.rows, warnings=warnings, pass_rates=pass_rate_stats(good, total),
                        selection=by_rule,
                        reasons={k: dict(sorted(sum(v.values(), Counter()).items())) for k, v in outcomes.items()},
                        outcomes={k: {o: dict(sorted(v.get(o, Counter()).items())) for o in OUTCOME_OF.values()}
                                  for k, v in outcomes.items()},
                        sources=_group_stats(keys, funnel.alive, keys.source, keys.source_names, rejected_by),
                        teachers=_teacher_stats(keys, funnel.alive, rejected_by), verifiers=tally.verifiers).dump()
    return Decisions(kept=funnel.alive, dedup=dedup, dup_of=dup_of, selection=selection,
                     selection_verdicts=selection_verdicts, stats=stats, timings=timings, pass_rate=record_rate)
