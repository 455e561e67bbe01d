"""Synthetic R1-shaped trace records for filter tests and benchmarks.

Each record looks like a teacher sample of the generate stage: `<think>` reasoning in sentences of
arithmetic, then a `\\boxed{}` answer; a fixed share of the samples is wrong, unboxed, truncated,
repetitive, mixed-language, or an exact or near copy of an earlier sample of the same prompt, so that
every step of the default filter has work. Records are a pure function of (seed, record index), so a
folder of any size is written shard by shard without holding more than one shard.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_WORDS = ("we have the so then first next add subtract multiply divide check value result sum total "
          "term each both since because therefore equals gives remaining part number numbers step case "
          "compute consider note that this which left right side equation factor prime square root").split()
# What a sample is, by share of samples (the rest are correct and well formed).
_KINDS = (("wrong", 0.18), ("unboxed", 0.05), ("truncated", 0.07), ("repetitive", 0.04),
          ("mixed_language", 0.03), ("exact_copy", 0.05), ("near_copy", 0.05))


def _sentence(rng: random.Random) -> str:
    a, b = rng.randint(2, 9999), rng.randint(2, 999)
    op, val = rng.choice((("+", a + b), ("-", a - b), ("*", a * b)))
    return (" ".join(rng.choices(_WORDS, k=rng.randint(6, 14))).capitalize()
            + f": {a} {op} {b} = {val}. ")


def _reasoning(rng: random.Random, chars: int) -> str:
    parts, size = [], 0
    while size < chars:
        s = _sentence(rng)
        parts.append(s)
        size += len(s)
    return "".join(parts)


def _kind(rng: random.Random) -> str:
    x = rng.random()
    for name, share in _KINDS:
        if x < share:
            return name
        x -= share
    return "correct"


def synthetic_record(index: int, samples: int = 4, chars: int = 6000, tokens: int | None = None, topk: int = 0,
                     vocab: int = 152_064, seed: int = 0, source: str = "synthetic",
                     arrays: str = "random") -> dict[str, Any]:
    """Record `index` (prompt index // samples, sample index % samples) of a synthetic run.

    chars: size of the reasoning text; tokens: completion length in tokens (default chars // 4);
    topk > 0 adds (tokens, topk) soft labels as numpy arrays (int32 ids, float16 logprobs, descending).
    arrays: "random" token ids and logprobs (as incompressible as real ones), or "periodic" ones of the
    same shape and in-memory size that Parquet compresses to almost nothing (memory benchmarks at a
    scale whose real soft labels would not fit on the disk).
    """
    import numpy as np

    p, k = divmod(index, samples)
    prng = random.Random(f"{seed}:prompt:{p}")
    a, b = prng.randint(10, 99), prng.randint(10, 99)
    gold = a * b + prng.randint(0, 50)
    problem = f"Problem {p}: compute {a} times {b} plus {gold - a * b}. " + _reasoning(prng, 120)
    kind = _kind(random.Random(f"{seed}:kind:{index}")) if k > 0 else _kind(random.Random(f"{seed}:kind:{index}:0"))
    if kind in ("exact_copy", "near_copy") and k == 0:
        kind = "correct"
    rng = random.Random(f"{seed}:sample:{p}:{0 if kind in ('exact_copy', 'near_copy') else k}")
    reasoning = _reasoning(rng, chars)
    answer = gold + (rng.randint(1, 9) if kind == "wrong" else 0)
    response = f"The answer is $\\boxed{{{answer}}}$." if kind != "unboxed" else f"The answer is {answer}."
    if kind == "exact_copy":  # the first sample again, up to case and spacing
        reasoning = reasoning.replace(". ", ".  ")
    elif kind == "near_copy":  # the first sample with its first word changed: one shingle differs (Jaccard ~0.99)
        reasoning = "Thereupon" + reasoning[reasoning.find(" "):]
    elif kind == "repetitive":
        loop = _sentence(rng)
        reasoning = reasoning[: len(reasoning) // 3] + loop * max(8, (2 * len(reasoning) // 3) // len(loop))
    elif kind == "mixed_language":
        reasoning = reasoning[: len(reasoning) // 2] + "我们先计算这个乘积，然后再加上余数，得到最终的答案。" * 40
    closed = kind != "truncated"
    completion = reasoning + ("\n</think>\n\n" + response if closed else "")
    n_tokens = tokens if tokens is not None else max(1, len(completion) // 4)
    ids_rng = np.random.default_rng([seed, index])
    periodic = arrays == "periodic"
    rec: dict[str, Any] = {
        "id": f"{source}-{p}#{k}", "prompt_id": f"{source}-{p}", "sample_index": k, "source": source,
        "problem": problem, "gold_answer": str(gold), "tests": None,
        "messages": [{"role": "user", "content": problem}], "teacher": "synthetic-r1", "sampling": "{}",
        "prefill": "<think>\n", "completion": completion,
        "completion_ids": (np.arange(n_tokens, dtype=np.int32) % 1000 if periodic
                           else ids_rng.integers(0, vocab, n_tokens, dtype=np.int32)),
        "reasoning": reasoning.strip(), "response": response if closed else None, "reasoning_closed": closed,
        "prompt_tokens": len(problem) // 4, "completion_tokens": n_tokens,
        "finish_reason": "stop" if closed else "length", "verdicts": [], "meta": "{}",
    }
    if topk and periodic:
        rec["topk_ids"] = np.tile(np.arange(topk, dtype=np.int32), (n_tokens, 1))
        rec["topk_logprobs"] = np.tile(-np.arange(topk, dtype=np.float16), (n_tokens, 1))
    elif topk:
        rec["topk_ids"] = ids_rng.integers(0, vocab, (n_tokens, topk), dtype=np.int32)
        rec["topk_logprobs"] = np.sort(-ids_rng.exponential(2.0, (n_tokens, topk)), axis=1)[:, ::-1].astype(np.float16)
    return rec


def synthetic_shards(num: int, shard_size: int = 256, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
    """The records 0..num-1 of `synthetic_record`, one list per shard."""
    for start in range(0, num, shard_size):
        yield [synthetic_record(i, **kwargs) for i in range(start, min(num, start + shard_size))]


def write_synthetic_run(folder: str | Path, num: int, shard_size: int = 256, **kwargs: Any) -> Path:
    """A finished generate-stage folder of `num` synthetic records (shards, manifest), one shard in memory at a time."""
    from distillkit.records import StageOutput, record_features

    folder = Path(folder)
    out = StageOutput(folder, "generate", f"synthetic-{num}-{kwargs.get('seed', 0)}", {"synthetic": kwargs})
    out.begin(overwrite=True)
    features = record_features(kwargs.get("topk", 0))
    for i, rows in enumerate(synthetic_shards(num, shard_size, **kwargs)):
        out.write_shard(i, rows, features)
    out.finish(counts={"records": num}, versions=["distillkit"])
    return folder


def lm_soft_labels(num_tokens: int, k: int = 20, vocab: int = 152_064, seed: int = 0):
    """Synthetic top-k soft labels shaped like a real teacher's, with the sampled token of each position.

    Returns (ids int32 (T, k), logprobs float16 (T, k) sorted descending, tokens int32 (T,)). Ids are uniform over
    `vocab` and distinct within a row: the incompressible worst case for storage (real top-k ids repeat the
    frequent tokens). Logprob rows: the top-1 probability is logistic(1.2 + s * N(0, 1)) (s = 1.6 below the median,
    3.0 above); the rest of the mass follows a Zipf law r^-a over the vocabulary (a uniform in [1, 3]) with
    log-normal noise (sigma 0.4), of which ranks 1..k-1 keep their share. Calibrated to real SmolLM2-135M-Instruct
    rows (vLLM, T=0.6, arithmetic prompts): medians of the top-1 probability (0.78 vs 0.77) and of the logprobs at
    ranks 1, 4, 9, 19 (-2.5, -5.2, -7.0, -8.6 vs -2.4, -5.0, -6.6, -8.0). The sampled token is drawn from the row
    (a top-k entry, or with the tail's mass a random other id), as a sampler does: it is among the top 20 at 96% of
    the positions (99.98% in the real rows, whose sampling also applied top-p).
    """
    import numpy as np

    rng = np.random.default_rng([seed, num_tokens, k, vocab])
    z = rng.standard_normal(num_tokens)
    p0 = 1 / (1 + np.exp(-(1.2 + np.where(z < 0, 1.6, 3.0) * z)))
    a = rng.uniform(1.0, 3.0, num_tokens)
    grid = np.linspace(1.0, 3.0, 65)
    log_rank = np.log(np.arange(1, vocab, dtype=np.float64))
    share = np.array([np.exp(-g * log_rank[:k - 1]).sum() / np.exp(-g * log_rank).sum() for g in grid])
    draws = -a[:, None] * log_rank[None, :4 * k] + 0.4 * rng.standard_normal((num_tokens, 4 * k))
    rest = np.sort(draws, axis=1)[:, ::-1][:, :k - 1]
    rest -= np.log(np.exp(rest).sum(1, keepdims=True))
    lp = np.concatenate([np.log(p0)[:, None], (np.log1p(-p0) + np.log(np.interp(a, grid, share)))[:, None] + rest], 1)
    lp = np.sort(lp, axis=1)[:, ::-1]
    distinct = np.sort(rng.integers(0, vocab - k + 1, (num_tokens, k)), axis=1) + np.arange(k)
    ids = np.take_along_axis(distinct, np.argsort(rng.random((num_tokens, k)), axis=1), 1).astype(np.int32)
    p = np.exp(lp)
    u = rng.random(num_tokens)
    pick = (np.cumsum(p, axis=1) < u[:, None]).sum(1)  # k: the tail
    tokens = np.where(pick < k, ids[np.arange(num_tokens), np.minimum(pick, k - 1)],
                      rng.integers(0, vocab, num_tokens)).astype(np.int32)
    return ids, lp.astype(np.float16), tokens
