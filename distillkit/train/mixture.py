"""Training mixtures: `train.sources` (stage outputs, local files, Hub datasets) -> one shuffled, seeded set.

    loaded  = [(source, load_source(source, cfg)) for source in cfg.train.sources]   # reads files
    mixture = build_mixture(loaded, seed, tokenizer, mixture_size)                   # pure
    mixture.examples      records ready for `distillkit.train.data.build_train_dataset`
    mixture.composition   {name: {kind, path, available, samples, sample_share, tokens, token_share}}

Reading the sources (`load_source`, `load_sources`, the two row formats, non-reasoning answers) is
`distillkit.data.sources`: the score stage reads its input through it too.

Counts: see `plan_counts`. Token counts are of the chat rendered with the student's template and
tokenized by the student's tokenizer, before truncation to `train.max_length`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from math import floor
from typing import Any

from distillkit.config import MixtureSourceConfig
from distillkit.data.sources import CLOSE_TAG, check_columns, column_names, is_trace, to_record
from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)


@dataclass
class Mixture:
    """The built mixture: shuffled records and what each source contributed."""

    examples: list[dict]
    composition: dict[str, dict[str, Any]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- counts


def plan_counts(sources: Sequence[MixtureSourceConfig], available: Sequence[int],
                mixture_size: int | None = None) -> list[int]:
    """Samples to take from each source.

    A source with `count` gets exactly that. Sources with a `weight` share the rest in proportion to
    their weights: the rest is `mixture_size` minus the counts, or without `mixture_size` the largest
    number for which no weighted source needs more rows than it has (the most limiting source sets
    it). Shares are rounded by largest remainder (ties to the earlier source), so they sum exactly.
    Asking a source for more rows than it has is an error unless the source sets `upsample: true`.
    """
    counts = [s.count or 0 for s in sources]
    weighted = [i for i, s in enumerate(sources) if s.weight]
    if weighted:
        total_weight = sum(Fraction(sources[i].weight) for i in weighted)  # exact: floats are dyadic
        if mixture_size is not None:
            rest = mixture_size - sum(counts)
        else:
            rest = min(floor(available[i] * total_weight / Fraction(sources[i].weight)) for i in weighted)
        quotas = {i: rest * Fraction(sources[i].weight) / total_weight for i in weighted}
        for i in weighted:
            counts[i] = floor(quotas[i])
        by_remainder = sorted(weighted, key=lambda i: (-(quotas[i] - counts[i]), i))
        for i in by_remainder[: rest - sum(counts[i] for i in weighted)]:
            counts[i] += 1
    for i, (s, n, have) in enumerate(zip(sources, counts, available)):
        if n <= have:
            continue
        where = f"train.sources[{i}] ({s.label!r})"
        if have == 0:
            raise DistillkitError(f"{where} has no rows, but the mixture asks for {n}; check its path, "
                                  "or remove the source")
        if not s.upsample:
            fix = "lower its count" if s.count is not None else "lower train.mixture_size or its weight"
            raise DistillkitError(f"{where}: the mixture asks for {n} samples but the source has {have}; "
                                  f"{fix}, or set upsample: true to repeat samples")
    if sum(counts) == 0:
        raise DistillkitError(f"the training mixture is empty (sources have {list(available)} rows); "
                              "check the sources' paths and weights")
    return counts


def sample_indices(num_available: int, num_samples: int, rng: random.Random) -> list[int]:
    """`num_samples` row indices: without repeats when possible, else every row k times plus a random rest."""
    repeats, rest = divmod(num_samples, num_available) if num_available else (0, 0)
    return list(range(num_available)) * repeats + rng.sample(range(num_available), rest)


# ----------------------------------------------------------------------------------------- mixture


def count_tokens(tokenizer, records: Sequence[dict]) -> list[int]:
    """Tokens of each record's chat, rendered with the student's template (batched: the fast tokenizer
    splits a batch across threads)."""
    from distillkit.train.data import record_to_messages

    texts = [tokenizer.apply_chat_template(record_to_messages(r), tokenize=False) for r in records]
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def build_mixture(loaded: Sequence[tuple[MixtureSourceConfig, Any]], seed: int, tokenizer,
                  mixture_size: int | None = None) -> Mixture:
    """Sample, format and shuffle the sources into one training set; deterministic for a seed.

    `loaded` pairs each source with its rows (a `datasets.Dataset` or a list of dicts). Each source
    draws its rows with its own generator (seeded by `seed` and the source's name), so adding a source
    leaves the rows drawn from the others unchanged; the union is then shuffled with `seed`.
    """
    sources = [s for s, _ in loaded]
    traces = []
    for i, (source, rows) in enumerate(loaded):
        columns = column_names(rows)
        check_columns(source, columns, i)
        trace = is_trace(source, columns)
        if trace and source.kind != "reasoning":
            raise DistillkitError(f"train.sources[{i}] ({source.label!r}) holds reasoning traces (distillkit "
                                  "records); use kind: reasoning, or a chat-format file for direct answers")
        traces.append(trace)
    available = [len(rows) for _, rows in loaded]
    counts = plan_counts(sources, available, mixture_size)

    picked: list[tuple[int, int]] = []      # (source index, row index), with repeats when upsampled
    records: dict[tuple[int, int], dict] = {}
    for i, ((source, rows), n) in enumerate(zip(loaded, counts)):
        indices = sample_indices(available[i], n, random.Random(f"{seed}:{source.label}"))
        for j in indices:
            if (i, j) not in records:
                records[(i, j)] = to_record(source, rows[j], j, traces[i])
        picked += [(i, j) for j in indices]
        if source.kind == "reasoning" and not traces[i]:
            without = sum(CLOSE_TAG not in records[(i, j)]["completion"] for j in set(indices))
            if without:
                log.warning("train.sources[%d] (%r): %d of %d reasoning samples have no %s; check the "
                            "source's kind", i, source.label, without, len(set(indices)), CLOSE_TAG)
    random.Random(seed).shuffle(picked)

    keys = list(records)
    tokens_of = dict(zip(keys, count_tokens(tokenizer, [records[k] for k in keys])))
    tokens = [0] * len(sources)
    for key in picked:
        tokens[key[0]] += tokens_of[key]
    total_samples, total_tokens = len(picked), sum(tokens)
    composition = {}
    for i, source in enumerate(sources):
        composition[source.label] = {
            "kind": source.kind, "path": source.path, "available": available[i], "samples": counts[i],
            # how a direct answer was written: after an empty reasoning block, or alone
            "reasoning_format": None if source.kind == "reasoning" else (source.reasoning_format or "empty"),
            "sample_share": round(counts[i] / total_samples, 4), "tokens": tokens[i],
            "token_share": round(tokens[i] / total_tokens, 4) if total_tokens else 0.0,
        }
    return Mixture(examples=[records[k] for k in picked], composition=composition)
