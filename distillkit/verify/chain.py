"""The Judge chain: one filter config's per-record steps (decontamination, the verifiers in order, dedup keys), built
once per process and run on a batch of records. The filter stage runs it shard by shard; generate's curation runs
it on fresh samples (pre-screen, resampling)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillkit.config import FilterConfig, VerifierSpec
from distillkit.verify.verifiers.base import Verdict
from distillkit.verify.verifiers.base import fails as verdict_fails


OUTCOME_OF = {False: "rejected", True: "passed", None: "cannot_judge"}


def step_names(cfg: FilterConfig, where: str | None = None) -> list[str]:
    """The step names of one chain (`filter.verifiers`, or a source's own): the kind, "#2" on its second use."""
    names, seen = [], Counter()
    for spec in cfg.chains()[where]:
        seen[spec.kind] += 1
        names.append(spec.kind if seen[spec.kind] == 1 else f"{spec.kind}#{seen[spec.kind]}")
    return names


def all_step_names(cfg: FilterConfig) -> list[str]:
    """Every chain's steps in one order (a funnel row each): `filter.verifiers`' order, a step only a source's
    chain has going right after that chain's previous step. A record meets its own chain's steps in this order."""
    order = step_names(cfg)
    for where in cfg.source_verifiers:
        after = -1
        for step in step_names(cfg, where):
            if step not in order:
                order.insert(after + 1, step)
            after = order.index(step)
    return order


def step_specs(cfg: FilterConfig) -> dict[str, list[tuple[str, VerifierSpec]]]:
    """{step: [(config key, spec)]}: which verifier(s) of which chain(s) each funnel step runs."""
    out: dict[str, list[tuple[str, VerifierSpec]]] = {}
    for where, specs in cfg.chains().items():
        for i, (step, spec) in enumerate(zip(step_names(cfg, where), specs)):
            out.setdefault(step, []).append((cfg.chain_key(where, i), spec))
    return out


def merge_numbers(total: dict, part: dict, sign: int = 1) -> dict:
    """`total` + sign * `part` for nested dicts of numbers (verifier usage stats); other values are taken."""
    out = dict(total)
    for k, v in part.items():
        if isinstance(v, dict):
            out[k] = merge_numbers(out.get(k, {}), v, sign)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + sign * v
        else:
            out[k] = v
    return {k: v for k, v in out.items() if v != 0 and v != {}}


@dataclass
class Tally:
    """The per-record steps' share of the funnel and outcome counts; tallies of shards add up."""

    steps: list[str]
    funnel: dict[str, list[int]] = field(default_factory=dict)  # step -> [in, rejected, out]
    outcomes: dict[str, dict[str, Counter]] = field(default_factory=dict)
    verifiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        for step, row in other.funnel.items():
            mine = self.funnel.setdefault(step, [0, 0, 0])
            for j in range(3):
                mine[j] += row[j]
        for step, outs in other.outcomes.items():
            for outcome, counts in outs.items():
                self.outcomes.setdefault(step, {}).setdefault(outcome, Counter()).update(counts)
        for step, stats in other.verifiers.items():
            self.verifiers[step] = merge_numbers(self.verifiers.get(step, {}), stats)
        for k, v in other.timings.items():
            self.timings[k] = round(self.timings.get(k, 0.0) + v, 3)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "funnel": self.funnel, "verifiers": self.verifiers, "timings": self.timings,
                "outcomes": {s: {o: dict(c) for o, c in outs.items()} for s, outs in self.outcomes.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tally:
        return cls(steps=d["steps"], funnel=d["funnel"], verifiers=d["verifiers"], timings=d["timings"],
                   outcomes={s: {o: Counter(c) for o, c in outs.items()} for s, outs in d["outcomes"].items()})


@dataclass
class Judged:
    """Phase-one output for a list of records, in their order."""

    verdicts: list[list[tuple[str, Verdict]]]
    alive: np.ndarray           # bool: no per-record step rejected it
    passed_verifiers: np.ndarray  # bool: no verifier rejected it (decontamination aside)
    order_len: np.ndarray       # int64: completion tokens (or characters) for `shortest` selection
    exact: np.ndarray           # (N, 2) uint64
    bands: np.ndarray | None    # (N, bands) uint64
    signatures: np.ndarray | None  # (N, num_perm) uint32
    rejected_by: list[tuple[str, str] | None] = field(default_factory=list)
    """Per record the (step, reason) of the first step that rejected it (the funnel row it counts in), else None."""


class Judge:
    """The per-record steps of one filter config, built once per process; `judge(records)` runs them.

    Each record meets its own chain: its source's under `filter.source_verifiers`, else `filter.verifiers`.
    A verifier two chains configure alike is built once (one pool of math workers)."""

    def __init__(self, cfg: FilterConfig):
        from distillkit.verify.dedup import MinHasher

        self.cfg = cfg
        self.steps = all_step_names(cfg)
        self.deco = None
        if cfg.decontaminate.enabled:
            from distillkit.verify.decontaminate import Decontaminator

            self.deco = Decontaminator(cfg.decontaminate.benchmarks, cfg.decontaminate.ngram)
        self.chain: list[tuple[str, Any]] = []  # (step, built verifier), each built once
        # chain (None: filter.verifiers, else a source) -> {step: (index into self.chain, rejects unjudged)}
        self.plans: dict[str | None, dict[str, tuple[int, bool]]] = {}
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        near = cfg.dedup.near
        self.hasher = MinHasher(near.num_perm, near.ngram, near.threshold) if near.enabled else None

    def _build(self) -> None:
        from distillkit.registry import build

        built: dict[tuple[str, str], int] = {}
        for where, specs in self.cfg.chains().items():
            plan = self.plans[where] = {}
            for step, spec in zip(step_names(self.cfg, where), specs):
                key = (step, json.dumps([spec.kind, spec.params], sort_keys=True, default=str))
                if key not in built:
                    built[key] = len(self.chain)
                    self.chain.append((step, build(spec.kind, spec.params, num_workers=self.cfg.num_workers)))
                plan[step] = (built[key], spec.rejects_unjudged)

    @property
    def rejects_unjudged(self) -> dict[str, bool]:
        """{step: rejects what it cannot judge} of `filter.verifiers` (the chain of records of no listed source)."""
        return {step: r for step, (_, r) in self.plans[None].items()}

    def all_steps(self) -> list[str]:
        return (["decontaminate"] if self.deco else []) + self.steps

    def usage(self) -> dict[str, dict[str, Any]]:
        """Usage of verifiers that report it (the judge's requests, tokens), cumulative for this process."""
        out: dict[str, dict[str, Any]] = {}
        for step, v in self.chain:
            if hasattr(v, "stats"):
                out[step] = merge_numbers(out[step], v.stats()) if step in out else v.stats()
        return out

    def plan_of(self, record: dict[str, Any]) -> dict[str, tuple[int, bool]]:
        """{step: (verifier index, rejects unjudged)} of the chain this record meets."""
        return self.plans.get(record.get("source") or "", self.plans[None]) if len(self.plans) > 1 \
            else self.plans[None]

    def judge(self, records: Sequence[dict[str, Any]], tally: Tally, on_done: Callable[[int], None] | None = None) -> Judged:
        n = len(records)
        verdicts: list[list[tuple[str, Verdict]]] = [[] for _ in range(n)]
        alive = np.ones(n, dtype=bool)
        plans = [self.plan_of(r) for r in records]

        def fails(i: int, step: str, v: Verdict) -> bool:
            return verdict_fails(v, step in plans[i] and plans[i][step][1])

        def record_step(step: str, judged: dict[int, Verdict], candidates: Sequence[int]) -> None:
            before = int(alive.sum())
            outs = tally.outcomes.setdefault(step, {o: Counter() for o in OUTCOME_OF.values()})
            for i, v in judged.items():
                verdicts[i].append((step, v))
                outs[OUTCOME_OF[v.passed]][v.reason] += 1
            for i in candidates:
                if i in judged and fails(i, step, judged[i]):
                    alive[i] = False
            row = tally.funnel.setdefault(step, [0, 0, 0])
            row[0] += before
            row[1] += before - int(alive.sum())
            row[2] += int(alive.sum())

        if self.deco is not None:
            t0 = time.time()
            record_step("decontaminate", self._decontaminate(records), range(n))
            tally.timings["decontaminate_s"] = round(tally.timings.get("decontaminate_s", 0) + time.time() - t0, 3)

        for step in self.steps:
            t0 = time.time()
            judged: dict[int, Verdict] = {}
            todo = [i for i in range(n) if step in plans[i] and (alive[i] or not self.cfg.stop_at_first_rejection)]
            for k in sorted({plans[i][step][0] for i in todo}):  # one batch per verifier of this step
                mine = [i for i in todo if plans[i][step][0] == k]
                judged.update(zip(mine, self.chain[k][1].batch(self._batch(self.chain[k][1], records, mine, verdicts))))
            record_step(step, dict(sorted(judged.items())), todo)
            tally.timings[f"{step}_s"] = round(tally.timings.get(f"{step}_s", 0) + time.time() - t0, 3)
        if on_done:
            on_done(n)

        # The teacher's solve rate per prompt counts verifier passes only: a correct trace dropped later
        # as a duplicate was still solved.
        passed = np.array([not any(fails(i, s, v) for s, v in verdicts[i] if s != "decontaminate")
                           for i in range(n)], dtype=bool)
        first = [next(((s, v.reason) for s, v in verdicts[i] if fails(i, s, v)), None) for i in range(n)]
        order_len = np.array([r.get("completion_tokens") or len(r.get("completion") or "") for r in records],
                             dtype=np.int64)
        t0 = time.time()
        exact, bands, sigs = self._dedup_keys(records, alive)
        tally.timings["dedup_keys_s"] = round(tally.timings.get("dedup_keys_s", 0) + time.time() - t0, 3)
        return Judged(verdicts, alive, passed, order_len, exact, bands, sigs, first)

    @staticmethod
    def _batch(verifier, records: Sequence[dict[str, Any]], rows: list[int], verdicts) -> list[dict[str, Any]]:
        # The judge defers to this run's earlier rule verdicts, which live here, not in the records.
        if getattr(verifier, "reads_prior_verdicts", False):
            return [{**records[i], "prior_verdicts": [v.as_record_entry(s) for s, v in verdicts[i]]} for i in rows]
        return [records[i] for i in rows]

    def _decontaminate(self, records: Sequence[dict[str, Any]]) -> dict[int, Verdict]:
        """Every record's decontamination verdict, its problem matched once per prompt."""
        by_prompt: dict[str, Verdict] = {}
        judged = {}
        for i, rec in enumerate(records):
            pid = rec["prompt_id"]
            if pid not in by_prompt:
                hit = self.deco.match(rec.get("problem") or "")
                by_prompt[pid] = (Verdict(False, "contaminated", f"{hit[0]}: '{hit[1]}'") if hit
                                  else Verdict(True, "clean"))
            judged[i] = by_prompt[pid]
        return judged

    def _dedup_keys(self, records: Sequence[dict[str, Any]], alive: np.ndarray):
        """(exact (N, 2) uint64, bands (N, bands) uint64 | None, signatures (N, num_perm) uint32 | None) of the
        completions: zeros for records already rejected (only dedup candidates need keys)."""
        from distillkit.verify.dedup import record_keys

        n = len(records)
        dedup = self.cfg.dedup
        live = np.flatnonzero(alive)  # only dedup candidates need keys
        exact = np.zeros((n, 2), np.uint64)
        bands = np.zeros((n, self.hasher.bands), np.uint64) if self.hasher else None
        sigs = np.zeros((n, self.hasher.num_perm), np.uint32) if self.hasher else None
        if (dedup.exact or dedup.near.enabled) and len(live):
            e, s, b = record_keys([records[i].get("completion") or "" for i in live],
                                  self.hasher if dedup.near.enabled else None)
            exact[live] = e
            if s is not None:
                sigs[live], bands[live] = s, b
        return exact, bands, sigs

    def close(self) -> None:
        for _, v in self.chain:
            v.close()
        self.chain = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
