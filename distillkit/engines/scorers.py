"""Scorers: token sequences -> the teacher's top-k logprobs at every position from `start` on (one prefill).

Both ask vLLM for `prompt_logprobs`: the distribution at position t predicts token t from tokens < t,
computed from the raw logits (vLLM's model runner skips the sampling processors for prompt tokens), so
they are the `raw_logprobs` that generate captures while sampling. Rows are fixed width k, sorted by
rank; the scored token itself is in row t only when it ranked in the top k (as in generate's rows).

    scorer.score(sequences, starts, k) -> [(ids (T, k) int32, logprobs (T, k) float32), ...]
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from distillkit.engines.base import fixed_width
from distillkit.registry import load_scorer

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """Registered in `distillkit.registry.SCORERS` under the teacher backend it scores with."""

    name: str
    tokenizer: Any
    max_len: int | None
    """Longest sequence (prompt + completion) the teacher takes; None when unknown (a remote server)."""

    @classmethod
    def for_score(cls, score_cfg, seed: int = 0) -> "Scorer":
        """A started scorer for the score stage's config (`make_scorer` calls this)."""
        ...

    def score(self, sequences: list[list[int]], starts: list[int], k: int) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def close(self) -> None: ...


def top_rows(steps, k: int) -> list[list[tuple[int, float]]]:
    """vLLM per-position {token_id: Logprob} dicts -> [(id, logprob)] of ranks 1..k, best first."""
    return [[(tid, lp.logprob) for tid, lp in sorted(step.items(), key=lambda kv: kv[1].rank)
             if lp.rank is not None and lp.rank <= k] for step in steps]


class VllmScorer:
    """vLLM's offline engine in this process: one `generate(max_tokens=1, prompt_logprobs=k)` per batch."""

    name = "vllm"
    draws_sampled_labels = False  # prompt logprobs: top-k only

    def __init__(self, llm, max_len: int | None):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.max_len = max_len

    @classmethod
    def for_score(cls, score_cfg, seed: int = 0) -> "VllmScorer":
        return cls.from_config(score_cfg.teacher, score_cfg.topk, seed)

    @classmethod
    def from_config(cls, teacher, topk: int, seed: int = 0) -> "VllmScorer":
        """`seed` is unused: a prefill samples nothing."""
        from distillkit.engines.vllm import start_engine, teacher_engine_kwargs
        from distillkit.models import resolve_model

        kwargs = teacher_engine_kwargs(teacher, resolve_model(teacher.model), topk)
        llm = start_engine(teacher, kwargs, where="score.teacher")
        return cls(llm, llm.llm_engine.model_config.max_model_len)

    def score(self, sequences, starts, k):
        from vllm import SamplingParams

        if not sequences:
            return []
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return [fixed_width(top_rows(o.prompt_logprobs[start:], k), k) for o, start in zip(outputs, starts)]

    def close(self) -> None:
        from distillkit.engines.vllm_cpu import shutdown_engine

        llm, self.llm = self.llm, None
        shutdown_engine(llm)


class ServerScorer:
    """A vLLM OpenAI-compatible server: POST /v1/completions with token ids, `max_tokens: 1` and vLLM's
    `prompt_logprobs` extra; `max_concurrency` requests in flight, retries with backoff (distillkit.http)."""

    name = "openai"
    draws_sampled_labels = False

    def __init__(self, base_url: str, model: str, tokenizer, api_key: str | None = None, max_concurrency: int = 16,
                 timeout_s: float = 600.0, max_retries: int = 5, server=None, backoff_s: float = 1.0):
        import contextlib

        from distillkit.http import client as http_client

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.max_len = None
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.server = server or contextlib.ExitStack()
        self.client = http_client(api_key, timeout_s, max_concurrency)

    @classmethod
    def for_score(cls, score_cfg, seed: int = 0) -> "ServerScorer":
        return cls.from_config(score_cfg.teacher, score_cfg.topk, seed)

    @classmethod
    def from_config(cls, teacher, topk: int, seed: int = 0, key: str = "score.teacher") -> "ServerScorer":
        """A started scorer for a TeacherConfig returning `topk` candidates per position (also the served teacher of
        on-policy training); `key`: where the teacher is configured in the recipe, for error messages."""
        from transformers import AutoTokenizer

        from distillkit.engines.openai_http import check_reachable, open_endpoint
        from distillkit.errors import DistillkitError
        from distillkit.models import resolve_model

        o = teacher.openai
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(teacher.model))
        except OSError as e:
            raise DistillkitError(f"{key}.model {teacher.model!r}: scoring tokenizes the traces with the "
                                  f"teacher's tokenizer, which could not be loaded ({e}); give the model's Hub id "
                                  "or folder (the server's weights are not needed here)") from e
        base_url, model, server = open_endpoint(teacher, seed, topk)
        scorer = cls(base_url, model, tokenizer, os.environ.get(o.api_key_env), o.max_concurrency, o.timeout_s,
                     o.max_retries, server)
        try:
            check_reachable(scorer.client, scorer.base_url, key=f"{key}.openai")
        except BaseException:
            scorer.close()
            raise
        return scorer

    def _one(self, sequence: list[int], start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        from distillkit.engines.openai_http import EndpointError, post_json

        url = f"{self.base_url}/completions"
        body = {"model": self.model, "prompt": list(sequence), "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": k}
        data = post_json(self.client, url, body, self.max_retries, self.backoff_s,
                         hint="; scoring needs a vLLM server (its `prompt_logprobs` extra)")
        steps = data["choices"][0].get("prompt_logprobs")
        if steps is None or len(steps) != len(sequence):
            raise EndpointError(f"the teacher endpoint {url} returned prompt logprobs for "
                                f"{0 if steps is None else len(steps)} of {len(sequence)} tokens; scoring needs a "
                                "vLLM server (its `prompt_logprobs` extra)")
        rows = [[(int(tid), v["logprob"]) for tid, v in sorted(step.items(), key=lambda kv: kv[1].get("rank") or 0)
                 if v.get("rank") is not None and v["rank"] <= k] for step in steps[start:]]
        return fixed_width(rows, k)

    def score(self, sequences, starts, k):
        if len(sequences) <= 1:
            return [self._one(s, t, k) for s, t in zip(sequences, starts)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(sequences))) as pool:
            return list(pool.map(lambda st: self._one(st[0], st[1], k), zip(sequences, starts)))

    def close(self) -> None:
        self.client.close()
        self.server.close()


def make_scorer(score_cfg, seed: int = 0) -> Scorer:
    """The scorer registered for `score.teacher.backend` (`distillkit.registry.SCORERS`), started."""
    return load_scorer(score_cfg.teacher.backend).for_score(score_cfg, seed)
