"""Teacher backends (vLLM engine, OpenAI-compatible HTTP, transformers), the one result type they share, and the
prompt as the teacher's chat template renders it (`render_prompt`, for generation and for scoring).

Every backend turns a list of `GenRequest` into a list of `PromptResult` (same order), so the stage
maps one shape into records whatever produced it. Soft labels are always fixed-width arrays:
`topk_ids` (T, k) int32 and `topk_logprobs` (T, k) float32, sorted by rank; a step that offered
fewer than k candidates is padded with id 0 and logprob -inf. Sampled soft labels (the transformers
backend with `sampling.soft_labels: sampled`) use the same two arrays, (T, N): the distinct ids drawn
and log(count / N) (distillkit/softlabels/sampled.py), plus `token_logprobs` (T,).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np

from distillkit.errors import DistillkitError

PAD_LOGPROB = float("-inf")


@dataclass
class GenRequest:
    """One prompt to sample `n` completions for."""

    prompt_id: str
    messages: list[dict[str, str]]
    prefill: str = ""
    """Text the assistant turn starts with; the completion continues after it."""
    prefill_in_template: bool = False
    """The chat template's generation prompt already ends with `prefill` (R1 templates add "<think>\\n")."""
    prompt_text: str | None = None
    """The rendered chat + prefill, when the stage holds a tokenizer (None: the backend renders)."""
    prompt_ids: list[int] | None = None
    seed: int | None = None
    """Per-prompt seed; sample i uses seed + i inside vLLM, so seeds of different prompts are spread apart."""


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str
    """"stop" or "length"."""
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None
    token_logprobs: np.ndarray | None = None
    """Sampled soft labels only: the teacher's logprob of each generated token (T,)."""


@dataclass
class PromptResult:
    prompt_tokens: int
    samples: list[Sample]
    meta: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """A teacher that samples, registered by name in `distillkit.registry.TEACHER_BACKENDS`.

    preflight, plan and generate ask the class what it needs before one is built (no model is loaded to
    answer), through the class attributes and `renders_prompt_locally`; the stage then calls `from_config`.
    """

    name: str
    """Its name in the registry (written into every record's meta)."""
    skips_special_tokens: ClassVar[bool]
    """Its completion text leaves special tokens out (vLLM, a server) or keeps them (transformers' decode): a
    `<think>` registered as special vanishes from the first (preflight: fatal), and stop strings are cut on
    text decoded the same way."""
    uses_vllm_engine: ClassVar[bool]
    """It starts vLLM's engine here from `teacher.vllm`: preflight checks `max_model_len` against the teacher's
    positions (vLLM refuses a longer one) and plan estimates the engine's GPU memory."""
    supports_data_parallel: ClassVar[bool]
    """generate may run `teacher.vllm.data_parallel_size` replicas of it, one process and engine each."""
    draws_sampled_labels: ClassVar[bool]
    """Sees the full next-token distribution at every step, so it can draw sampled soft labels
    (`sampling.soft_labels: sampled`); backends that return top-k logprobs only cannot."""
    model_id: str
    tokenizer: Any | None
    """A transformers-style tokenizer when the backend has one (used to render chat + prefill)."""
    logprobs_mode: str

    @classmethod
    def renders_prompt_locally(cls, teacher) -> bool:
        """Whether prompts go through the teacher's chat template here (`teacher`: a TeacherConfig), so
        preflight needs its tokenizer; False when the server applies its own template."""
        ...

    @classmethod
    def from_config(cls, gen_cfg) -> "Backend":
        """A started backend for a GenerateConfig (heavy libraries are imported here)."""
        ...

    def generate(self, requests: list[GenRequest], sampling) -> list[PromptResult]: ...

    def close(self) -> None: ...


def prompt_seed(base_seed: int | None, prompt_id: str) -> int | None:
    """A 62-bit seed per prompt from the run seed and the prompt id (independent of order and batching).

    vLLM derives sample i's seed as seed + i, so consecutive per-prompt seeds would make sample 1 of
    one prompt reuse sample 0's random stream of the next: hashing spreads them over 2^62 values.
    """
    if base_seed is None:
        return None
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def fixed_width(rows: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step [(token_id, logprob), ...] sorted by rank -> ((T, k) int32, (T, k) float32), padded."""
    ids = np.zeros((len(rows), k), dtype=np.int32)
    lps = np.full((len(rows), k), PAD_LOGPROB, dtype=np.float32)
    for t, row in enumerate(rows):
        row = row[:k]
        if row:
            ids[t, : len(row)] = [r[0] for r in row]
            lps[t, : len(row)] = [r[1] for r in row]
    return ids, lps


def cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """`text` before the earliest of the `stop` strings, or None when none of them occurs."""
    cuts = [i for s in stop if (i := text.find(s)) >= 0]
    return text[: min(cuts)] if cuts else None


def apply_stop(sample: Sample, stop: Sequence[str], tokenizer, eos_ids: Sequence[int] = (),
               skip_special_tokens: bool = False) -> Sample:
    """End `sample` at its first stop string, with text, token ids and soft labels that agree.

    vLLM (offline and served) cuts the text at the stop string but keeps the token ids that spelled it;
    the transformers backend cuts neither. Here the ids are trimmed to the longest prefix whose decoding
    is a prefix of the cut text, and the text becomes that decoding, so `completion_ids` decode to
    `completion` (what the trainer checks before using soft labels). Without a tokenizer only the text
    can be cut. A sample that ended with EOS before any stop string is returned unchanged.
    `skip_special_tokens`: how the backend rendered its text (vLLM leaves special tokens out).
    """
    if not stop:
        return sample
    ids = list(sample.token_ids)
    if tokenizer is None or not ids:
        cut = cut_at_stop(sample.text, stop)
        return sample if cut is None else replace(sample, text=cut, finish_reason="stop")

    def decode(n: int) -> str:
        return tokenizer.decode(ids[:n], skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    body = len(ids) - 1 if ids[-1] in eos_ids else len(ids)
    cut = cut_at_stop(decode(body), stop)
    if cut is None:
        return sample
    n = body
    while n > 0 and not cut.startswith(decode(n)):
        n -= 1
    return replace(sample, text=decode(n), token_ids=ids[:n], finish_reason="stop",
                   topk_ids=None if sample.topk_ids is None else sample.topk_ids[:n],
                   topk_logprobs=None if sample.topk_logprobs is None else sample.topk_logprobs[:n],
                   token_logprobs=None if sample.token_logprobs is None else sample.token_logprobs[:n])


def render_prompt(tokenizer, messages: list[dict[str, str]], prefill: str) -> tuple[str, list[int], bool]:
    """(prompt text, its token ids, whether the template already ended with `prefill`).

    R1-style templates end their generation prompt with "<think>\\n" themselves; others get the
    prefill appended, so in both cases the completion starts inside the reasoning block.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise DistillkitError("the teacher's tokenizer has no chat template; give a model with one "
                              "(or use an OpenAI-compatible endpoint that applies its own)")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    in_template = bool(prefill) and text.endswith(prefill)
    if prefill and not in_template:
        text += prefill
    # The template already holds the special tokens (BOS included where the model wants one).
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, list(ids), in_template
