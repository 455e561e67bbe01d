"""Exact and near-duplicate removal of traces (MinHash LSH from `datasketch`); the first copy is kept."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from distillkit.config import DedupConfig
from distillkit.filter.verifiers.base import Verdict

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Case and whitespace folded: two traces differing only there are the same trace."""
    return " ".join(text.lower().split())


def shingles(text: str, n: int) -> set[str]:
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def find_duplicates(records: Sequence[dict[str, Any]], candidates: Sequence[int], cfg: DedupConfig,
                    field: str = "completion") -> dict[int, Verdict]:
    """Rejection verdicts for the duplicates among `records[i] for i in candidates`, in that order.

    Only candidates are compared: a duplicate of an already rejected trace is no reason to drop one.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i in candidates:
        groups[records[i]["prompt_id"] if cfg.scope == "prompt" else ""].append(i)
    rejected: dict[int, Verdict] = {}
    for members in groups.values():
        if cfg.exact:
            first: dict[str, int] = {}
            for i in members:
                key = normalize(records[i].get(field) or "")
                if key in first:
                    rejected[i] = Verdict(False, "exact_duplicate", f"of {records[first[key]]['id']}")
                else:
                    first[key] = i
        if cfg.near.enabled:
            rejected.update(_near(records, [i for i in members if i not in rejected], cfg, field))
    return rejected


def _near(records, members: list[int], cfg: DedupConfig, field: str) -> dict[int, Verdict]:
    if len(members) < 2:
        return {}
    from distillkit.errors import require

    datasketch = require("datasketch", "filter", "near-duplicate removal needs `datasketch`")
    lsh = datasketch.MinHashLSH(threshold=cfg.near.threshold, num_perm=cfg.near.num_perm)
    out: dict[int, Verdict] = {}
    kept: dict[int, Any] = {}  # index -> MinHash of the traces kept so far
    for i in members:
        mh = datasketch.MinHash(num_perm=cfg.near.num_perm, seed=1)
        mh.update_batch([s.encode() for s in shingles(records[i].get(field) or "", cfg.near.ngram)])
        # LSH returns candidates above roughly the threshold; confirm with the MinHash estimate.
        hits = [j for j in lsh.query(mh) if mh.jaccard(kept[j]) >= cfg.near.threshold]
        if hits:
            out[i] = Verdict(False, "near_duplicate", f"of {records[min(hits)]['id']}")
        else:
            lsh.insert(i, mh)
            kept[i] = mh
    return out
