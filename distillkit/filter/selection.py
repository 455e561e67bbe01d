"""Selection per prompt: pass-rate filtering, then keep all, at most k, or the shortest passing trace."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from distillkit.config import SelectionConfig
from distillkit.filter.verifiers.base import Verdict


def pass_rates(records: Sequence[dict[str, Any]], passed: Sequence[bool]) -> dict[str, float]:
    """Share of each prompt's samples that passed the verifiers: how often the teacher solves it."""
    total: dict[str, int] = defaultdict(int)
    good: dict[str, int] = defaultdict(int)
    for rec, ok in zip(records, passed):
        total[rec["prompt_id"]] += 1
        good[rec["prompt_id"]] += int(ok)
    return {p: good[p] / total[p] for p in total}


def select(records: Sequence[dict[str, Any]], candidates: Sequence[int], rates: dict[str, float],
           cfg: SelectionConfig) -> dict[int, Verdict]:
    """Rejection verdicts for the candidates that the policy does not keep."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i in candidates:
        by_prompt[records[i]["prompt_id"]].append(i)
    out: dict[int, Verdict] = {}
    for prompt, members in by_prompt.items():
        rate = rates.get(prompt, 0.0)
        if rate < cfg.min_pass_rate:
            out.update({i: Verdict(False, "pass_rate_below_min", f"{rate:.2f} < {cfg.min_pass_rate}") for i in members})
            continue
        if rate > cfg.max_pass_rate:
            out.update({i: Verdict(False, "pass_rate_above_max", f"{rate:.2f} > {cfg.max_pass_rate}") for i in members})
            continue
        if cfg.policy == "all":
            continue
        if cfg.policy == "max_k":
            # Samples are i.i.d., so the lowest indices are as good a choice as a random one, and stable.
            order = sorted(members, key=lambda i: records[i].get("sample_index", 0))
            out.update({i: Verdict(False, "over_max_k", f"k={cfg.k}") for i in order[cfg.k:]})
        else:  # shortest: fewer tokens first; ties broken by sample index for determinism
            order = sorted(members, key=lambda i: (records[i].get("completion_tokens") or len(records[i].get("completion") or ""),
                                                   records[i].get("sample_index", 0)))
            out.update({i: Verdict(False, "not_shortest") for i in order[1:]})
    return out
