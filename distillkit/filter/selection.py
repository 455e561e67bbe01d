"""Selection per prompt: the difficulty band and bins over pass rates, then keep all, at most k, or the shortest
passing trace."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from distillkit.config import SelectionConfig
from distillkit.records import seeded_rank
from distillkit.verify.verifiers.base import Verdict


def pass_rates(records: Sequence[dict[str, Any]], passed: Sequence[bool]) -> dict[str, float]:
    """Share of each prompt's samples that passed the verifiers: how often the teacher solves it."""
    total: dict[str, int] = defaultdict(int)
    good: dict[str, int] = defaultdict(int)
    for rec, ok in zip(records, passed):
        total[rec["prompt_id"]] += 1
        good[rec["prompt_id"]] += int(ok)
    return {p: good[p] / total[p] for p in total}


def _bin_choice(rates: dict[Any, float], cfg: SelectionConfig, name: Callable[[Any], str]) -> dict[Any, Verdict]:
    """The prompts each difficulty bin does not keep: of a bin's n prompts, the round(share * n) whose hash
    of (seed, prompt id) is lowest stay (a stable choice, the same whatever the record order or sharding)."""
    edges = cfg.bins
    members: dict[int, list] = defaultdict(list)
    for prompt, rate in rates.items():
        members[min(bisect.bisect_right(edges, rate) - 1, len(edges) - 2)].append(prompt)
    out: dict[Any, Verdict] = {}
    for b, prompts in members.items():
        share, lo, hi = cfg.bin_shares[b], edges[b], edges[b + 1]
        keep = math.floor(share * len(prompts) + 0.5)
        order = sorted(prompts, key=lambda p: seeded_rank(cfg.seed, name(p)))
        why = Verdict(False, "bin_share", f"pass rate in [{lo:g}, {hi:g}{']' if b == len(edges) - 2 else ')'}: "
                                           f"kept {keep} of {len(prompts)} prompts (share {share:g})")
        out.update({p: why for p in order[keep:]})
    return out


def select(records: Sequence[dict[str, Any]], candidates: Sequence[int], rates: dict[Any, float],
           cfg: SelectionConfig, name: Callable[[Any], str] = str) -> dict[int, Verdict]:
    """Rejection verdicts for the candidates that the policy does not keep.

    `rates[prompt]` is the teacher's pass rate of each prompt, `name(prompt)` its stable id (prompt keys may be
    codes)."""
    by_prompt: dict[Any, list[int]] = defaultdict(list)
    for i in candidates:
        by_prompt[records[i]["prompt_id"]].append(i)
    out: dict[int, Verdict] = {}
    in_band = {}
    for prompt, members in by_prompt.items():
        rate = rates.get(prompt, 0.0)
        if rate < cfg.min_pass_rate:
            out.update({i: Verdict(False, "pass_rate_below_min", f"{rate:.2f} < {cfg.min_pass_rate}") for i in members})
        elif rate > cfg.max_pass_rate:
            out.update({i: Verdict(False, "pass_rate_above_max", f"{rate:.2f} > {cfg.max_pass_rate}") for i in members})
        else:
            in_band[prompt] = rate
    binned = _bin_choice(in_band, cfg, name) if cfg.bins is not None else {}
    for prompt in in_band:
        members = by_prompt[prompt]
        if prompt in binned:
            out.update({i: binned[prompt] for i in members})
        elif cfg.policy == "max_k":
            # Samples are i.i.d., so the lowest indices are as good a choice as a random one, and stable.
            order = sorted(members, key=lambda i: records[i].get("sample_index", 0))
            out.update({i: Verdict(False, "over_max_k", f"k={cfg.k}") for i in order[cfg.k:]})
        elif cfg.policy == "shortest":  # fewer tokens first; ties broken by sample index for determinism
            order = sorted(members, key=lambda i: (records[i].get("completion_tokens") or len(records[i].get("completion") or ""),
                                                   records[i].get("sample_index", 0)))
            out.update({i: Verdict(False, "not_shortest") for i in order[1:]})
    return out


def rule_counts(records: Sequence[dict[str, Any]], candidates: Sequence[int],
                dropped: dict[int, Verdict]) -> dict[str, Any]:
    """What each selection rule removed: {prompts_in, prompts_out, rules: {reason: {prompts, traces}}}; a
    rule's `prompts` are the prompts it took every remaining trace of."""
    per_prompt: dict[Any, int] = defaultdict(int)
    left: dict[Any, int] = defaultdict(int)
    gone: dict[tuple[Any, str], int] = defaultdict(int)
    traces: dict[str, int] = defaultdict(int)
    for i in candidates:
        p = records[i]["prompt_id"]
        per_prompt[p] += 1
        if (v := dropped.get(i)) is None:
            left[p] += 1
        else:
            gone[p, v.reason] += 1
            traces[v.reason] += 1
    prompts: dict[str, int] = defaultdict(int)
    for (p, reason), n in gone.items():
        prompts[reason] += int(n == per_prompt[p])
    return {"prompts_in": len(per_prompt), "prompts_out": len(left),
            "rules": {r: {"prompts": prompts[r], "traces": traces[r]} for r in sorted(traces)}}
