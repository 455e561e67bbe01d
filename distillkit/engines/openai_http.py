"""A teacher behind an OpenAI-compatible endpoint (a `vllm serve` fleet, SGLang, a hosted R1 API).

Requests run `max_concurrency` at a time; timeouts, connection errors, 408/409/429 and 5xx are
retried with exponential backoff (honouring Retry-After); other 4xx stop the run with the server's
message. Soft labels need token ids, which vLLM returns with its `return_tokens_as_token_ids`
request field ("token_id:123" strings); a server that ignores it can still sample, without soft labels.

With `api: chat` the prefill ("<think>\\n") is sent as an unfinished assistant message with vLLM's
`continue_final_message`; `api: completions` renders the chat template locally and sends token ids.
Run the server without a reasoning parser: with one, vLLM moves the reasoning out of `content`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distillkit.engines.base import GenRequest, PromptResult, Sample, fixed_width
from distillkit.errors import DistillkitError
from distillkit.http import post_with_retries

log = logging.getLogger(__name__)

TOKEN_ID_PREFIX = "token_id:"


class EndpointError(DistillkitError):
    """The endpoint refused or kept failing a request."""


def open_endpoint(teacher, seed: int = 0, topk: int = 0) -> tuple[str, str, contextlib.ExitStack]:
    """(base_url, model name, stack to close) of a teacher's endpoint: `teacher.openai.base_url`, or a local
    vLLM server started for `teacher.model` when `teacher.openai.serve` is set (closing the stack stops it)."""
    o = teacher.openai
    stack = contextlib.ExitStack()
    if not o.serve:
        return o.base_url, o.model or teacher.model, stack
    from distillkit.engines.server import vllm_server
    from distillkit.models import resolve_model

    path = resolve_model(teacher.model)
    v = teacher.vllm  # the engine options apply to the server distillkit starts
    args = ["--max-logprobs", str(max(v.max_logprobs, topk))]
    if v.max_model_len is not None:
        args += ["--max-model-len", str(v.max_model_len)]
    with stack:
        url = stack.enter_context(vllm_server(path, seed=seed, extra_args=args))
        return url + "/v1", path, stack.pop_all()


def check_reachable(client, base_url: str, key: str = "generate.teacher.openai") -> None:
    """Fail fast, once, with one clear message when nothing answers at base_url."""
    import httpx

    try:
        r = client.get(f"{base_url}/models", timeout=min(10.0, client.timeout.read or 10.0))
    except httpx.TransportError as e:
        raise EndpointError(
            f"cannot reach the teacher endpoint {base_url} ({type(e).__name__}: {e}); start the server "
            f"or fix {key}.base_url") from None
    if r.status_code in (401, 403):
        raise EndpointError(f"the teacher endpoint {base_url} refused the API key (HTTP {r.status_code}); "
                            f"set the variable named by {key}.api_key_env")


def post_json(client, url: str, body: dict, max_retries: int, backoff_s: float, hint: str = "") -> dict:
    """POST with retries (distillkit.http); a server that keeps failing or refuses is an EndpointError
    (`hint` is appended to a refusal: what the request needs from the server)."""
    r, last = post_with_retries(client, url, body, max_retries=max_retries, backoff_s=backoff_s)
    if r is None:
        raise EndpointError(f"the teacher endpoint {url} failed {max_retries + 1} times; last error: {last}")
    if r.status_code >= 300:
        raise EndpointError(f"the teacher endpoint {url} rejected a request (HTTP {r.status_code}: "
                            f"{r.text[:500]}){hint}")
    return r.json()


def _token_id(token: str) -> int | None:
    return int(token[len(TOKEN_ID_PREFIX):]) if token.startswith(TOKEN_ID_PREFIX) else None


class OpenAIBackend:
    name = "openai"
    skips_special_tokens = True  # vLLM's server, like its engine
    uses_vllm_engine = False  # `openai.serve` runs vLLM in a server process, which plan does not estimate
    draws_sampled_labels = False  # top-k logprobs only
    supports_data_parallel = False  # the server scales itself; `max_concurrency` requests are in flight

    @classmethod
    def renders_prompt_locally(cls, teacher) -> bool:
        return teacher.openai.api == "completions"  # chat: the server applies its own template

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 16,
                 timeout_s: float = 600.0, max_retries: int = 5, api: str = "chat",
                 logprobs_mode: str = "raw_logprobs", tokenizer: Any = None, model_id: str | None = None,
                 backoff_s: float = 1.0, server: contextlib.ExitStack | None = None):
        from distillkit.http import client as http_client

        self.server = server or contextlib.ExitStack()
        """A server distillkit started (`openai.serve`), stopped by close()."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_id = model_id or model
        self.api = api
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        # The mode is the server's (`--logprobs-mode`); recorded as configured, the server is not asked.
        self.logprobs_mode = logprobs_mode
        self.tokenizer = tokenizer
        self.client = http_client(api_key, timeout_s, max_concurrency)

    @classmethod
    def from_config(cls, gen_cfg) -> "OpenAIBackend":
        o = gen_cfg.teacher.openai
        tokenizer = None
        if o.api == "completions":
            from distillkit.models import resolve_model
            from transformers import AutoTokenizer

            path = resolve_model(gen_cfg.teacher.model)
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except OSError as e:
                raise DistillkitError(
                    f"generate.teacher.openai.api='completions' renders prompts locally and needs the teacher's "
                    f"tokenizer, but {gen_cfg.teacher.model!r} could not be loaded ({e}); use api: chat") from e
        base_url, model, server = open_endpoint(gen_cfg.teacher, gen_cfg.sampling.seed or 0,
                                                gen_cfg.sampling.topk_logprobs)
        backend = cls(base_url, model, os.environ.get(o.api_key_env), o.max_concurrency, o.timeout_s,
                      o.max_retries, o.api, gen_cfg.sampling.logprobs_mode, tokenizer, gen_cfg.teacher.model,
                      server=server)
        try:
            backend.check_reachable()
        except BaseException:
            backend.close()
            raise
        return backend

    # ------------------------------------------------------------------ transport

    def check_reachable(self) -> None:
        check_reachable(self.client, self.base_url)

    def _post(self, path: str, body: dict) -> dict:
        return post_json(self.client, f"{self.base_url}{path}", body, self.max_retries, self.backoff_s)

    # ------------------------------------------------------------------ requests

    def _common(self, request: GenRequest, sampling) -> dict:
        body = {"model": self.model, "n": sampling.n, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                # vLLM extra: token ids instead of decoded strings, so soft labels can be stored as ids.
                "return_tokens_as_token_ids": True}
        if request.seed is not None:
            body["seed"] = request.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        return body

    def _chat(self, request: GenRequest, sampling) -> PromptResult:
        body = self._common(request, sampling)
        messages = list(request.messages)
        if request.prefill and not request.prefill_in_template:
            # vLLM extras: render the template without a new generation prompt and continue the
            # unfinished assistant message, which is how the prefill reaches the model.
            messages.append({"role": "assistant", "content": request.prefill})
            body.update(add_generation_prompt=False, continue_final_message=True)
        body.update(messages=messages, logprobs=True, top_logprobs=sampling.topk_logprobs)
        data = self._post("/chat/completions", body)
        samples = []
        for choice in sorted(data["choices"], key=lambda c: c["index"]):
            content = (choice.get("logprobs") or {}).get("content") or []
            ids = [_token_id(t["token"]) for t in content]
            tops = [[(_token_id(c["token"]), c["logprob"]) for c in t.get("top_logprobs") or []] for t in content]
            samples.append(self._sample(choice["message"].get("content") or "", ids, tops,
                                        choice.get("finish_reason"), sampling.topk_logprobs))
        return PromptResult(prompt_tokens=(data.get("usage") or {}).get("prompt_tokens", 0), samples=samples)

    def _completion(self, request: GenRequest, sampling) -> PromptResult:
        if request.prompt_ids is None:
            raise ValueError("api=completions needs prompt_ids rendered by the stage")
        body = self._common(request, sampling)
        body.update(prompt=list(request.prompt_ids), logprobs=sampling.topk_logprobs)
        data = self._post("/completions", body)
        samples = []
        for choice in sorted(data["choices"], key=lambda c: c["index"]):
            lp = choice.get("logprobs") or {}
            ids = [_token_id(t) for t in lp.get("tokens") or []]
            tops = [[(_token_id(t), v) for t, v in (d or {}).items()] for d in lp.get("top_logprobs") or []]
            samples.append(self._sample(choice.get("text") or "", ids, tops, choice.get("finish_reason"),
                                        sampling.topk_logprobs))
        return PromptResult(prompt_tokens=len(request.prompt_ids), samples=samples)

    def _sample(self, text: str, ids: list, tops: list, finish_reason: str | None, k: int) -> Sample:
        if any(i is None for i in ids) or (not ids and text):
            if k:
                raise EndpointError(
                    f"the teacher endpoint {self.base_url} did not return token ids, which soft labels need "
                    "(vLLM's return_tokens_as_token_ids); use a vLLM server or set sampling.topk_logprobs=0")
            ids = self.tokenizer.encode(text, add_special_tokens=False) if self.tokenizer is not None else []
        topk_ids = topk_lps = None
        if k:
            rows = [sorted(row, key=lambda x: -x[1])[:k] for row in tops]
            topk_ids, topk_lps = fixed_width(rows, k)
        return Sample(text=text, token_ids=ids, finish_reason=finish_reason or "stop",
                      topk_ids=topk_ids, topk_logprobs=topk_lps)

    def generate(self, requests: list[GenRequest], sampling) -> list[PromptResult]:
        one = self._chat if self.api == "chat" else self._completion
        if len(requests) <= 1:
            return [one(r, sampling) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: one(r, sampling), requests))

    def close(self) -> None:
        self.client.close()
        self.server.close()
