"""Decontamination: drop prompts that share a word n-gram with a benchmark problem (open-r1 uses n=8)."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

from distillkit.config import BenchmarkSource
from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def load_benchmark_problems(src: BenchmarkSource) -> list[str]:
    """Problem texts of one benchmark: a local file, or a Hub dataset (needs network or a cache)."""
    if src.hub_dataset:
        from datasets import load_dataset

        ds = load_dataset(src.hub_dataset, src.hub_config, split=src.split)
        if src.column not in ds.column_names:
            raise DistillkitError(f"benchmark {src.hub_dataset!r} has no column {src.column!r}; "
                                  f"choose one of {ds.column_names}")
        return [str(x) for x in ds[src.column]]
    path = Path(src.path)
    if not path.exists():
        raise DistillkitError(f"filter.decontaminate: benchmark file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text) if suffix == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise DistillkitError(f"filter.decontaminate: cannot read {path} ({suffix}); "
                              "use .jsonl, .json, .parquet, .csv or .txt")
    missing = [i for i, r in enumerate(rows) if src.column not in r]
    if missing:
        raise DistillkitError(f"filter.decontaminate: row {missing[0]} of {path} has no column {src.column!r}; "
                              f"set `column` to one of {sorted(rows[missing[0]])}")
    return [str(r[src.column]) for r in rows]


class Decontaminator:
    """`match(problem)` names the benchmark sharing an n-gram with `problem`, or returns None.

    A problem shorter than n words cannot share an n-gram; it matches only if its words equal a
    benchmark problem's words exactly.
    """

    def __init__(self, sources: list[BenchmarkSource], n: int):
        self.n = n
        self._grams: dict[tuple[str, ...], str] = {}
        self._short: dict[tuple[str, ...], str] = {}
        for src in sources:
            problems = load_benchmark_problems(src)
            for p in problems:
                toks = words(p)
                self._short.setdefault(tuple(toks), src.label)
                for g in ngrams(toks, n):
                    self._grams.setdefault(g, src.label)
            log.info("decontamination: %d problems from %s", len(problems), src.label)

    def match(self, problem: str) -> tuple[str, str] | None:
        """(benchmark label, shared text) or None."""
        toks = words(problem)
        if len(toks) < self.n:
            label = self._short.get(tuple(toks))
            return (label, " ".join(toks)) if label else None
        for i in range(len(toks) - self.n + 1):  # the first shared n-gram in the problem's order
            g = tuple(toks[i:i + self.n])
            if g in self._grams:
                return self._grams[g], " ".join(g)
        return None
