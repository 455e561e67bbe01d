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


def _source_stats(keys: Keys, alive: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per source: records, verifier passes, kept records, pass rate, prompts and prompts kept."""
    sources = {}
    for s, name in enumerate(keys.source_names):
        mine = keys.source == s
        records = int(mine.sum())
        passed = int(keys.passed_verifiers[mine].sum())
        sources[name] = {"records": records, "passed_verifiers": passed, "kept": int(alive[mine].sum()),
                         "pass_rate": round(passed / records, 4) if records else 0.0,
                         "prompts": len(np.unique(keys.prompt[mine])),
                         "prompts_kept": len(np.unique(keys.prompt[mine & alive]))}
    return dict(sorted(sources.items()))


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
    warnings = cannot_judge_warnings(outcomes, cfg)
    for w in warnings:
        log.warning("filter: %s", w)
    stats = FilterStats(funnel=funnel.rows, warnings=warnings, pass_rates=pass_rate_stats(good, total),
                        selection=by_rule,
                        reasons={k: dict(sorted(sum(v.values(), Counter()).items())) for k, v in outcomes.items()},
                        outcomes={k: {o: dict(sorted(v.get(o, Counter()).items())) for o in OUTCOME_OF.values()}
                                  for k, v in outcomes.items()},
                        sources=_source_stats(keys, funnel.alive), verifiers=tally.verifiers).dump()
    return Decisions(kept=funnel.alive, dedup=dedup, dup_of=dup_of, selection=selection,
                     selection_verdicts=selection_verdicts, stats=stats, timings=timings, pass_rate=record_rate)
