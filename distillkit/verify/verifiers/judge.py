"""Model-judge verifier: a judge model behind an OpenAI-compatible endpoint grades answers rules cannot check.

The R1 recipe checks math by rules and code by tests; free-form answers, proofs and science questions
go to a strong model instead. This verifier asks that model, for each record, whether the final
answer (the text after `</think>`) matches the reference answer and/or satisfies a rubric, and reads
a strict verdict line. What it does:

- **Defers to rules.** By default it only judges records on which no rule verifier of this run
  (`rule_verifiers`, default math and code) gave a pass or a fail; those get
  `passed=None, reason="rule_verdict_kept"` and cost nothing. With `override_rules: true` it judges
  every record. The stage rejects a record when *any* step fails it, so an overriding judge can veto
  a rule pass but cannot rescue a rule failure (remove that rule verifier from the chain for that).
- **Strict format.** The last non-empty line of the reply must be exactly `VERDICT: CORRECT` or
  `VERDICT: INCORRECT`; anything else is `passed=None, reason="judge_unparseable"` (never a pass).
- **Transport.** `max_concurrency` requests at a time, each with `timeout_s`; timeouts, connection
  errors, 408/409/429 and 5xx are retried `max_retries` times with exponential backoff and jitter
  (Retry-After honoured). 401/403/404 are configuration mistakes and stop the run; another 4xx
  (a prompt over the judge's context, say) leaves that record `judge_rejected_request`.
- **Unreachable judge.** When a request still fails after its retries the endpoint counts as down
  for the rest of the run: `on_unreachable: error` (default) raises one DistillkitError;
  `on_unreachable: cannot_judge` gives `judge_unreachable` to every record that needed a request
  (verdicts already in the cache still apply). Never a silent pass.
- **Cache.** Every reply the endpoint returned is stored under `cache_dir` (default
  `$DISTILLKIT_CACHE/judge`, i.e. `~/.cache/distillkit/judge`; not the filter folder, which
  `--overwrite` clears, and a rerun is exactly when the cache should pay) keyed by a hash of the judge
  model, the full request messages (problem, reference, rubric and the judged answer) and the
  sampling settings. A rerun sends no request. Replies are parsed when read, so a parser change needs
  no new request; failed requests are not cached.
- **Cost.** Each verdict's `detail` is JSON with the prompt/completion tokens of its reply (from the
  `usage` field) and whether it came from the cache; `stats()` sums them for the filter manifest
  (`stats.verifiers.<step>`).

The API key is read from the environment variable named by `api_key_env` and sent only in the
Authorization header; it is never logged or put in an error message.

The retry loop is `distillkit.http.post_with_retries`, shared with the teacher's HTTP backend; what a
failure means (fatal key/URL mistakes, one record refused, the endpoint down) is decided here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from pydantic import field_validator

from distillkit.errors import DistillkitError
from distillkit.http import post_with_retries
from distillkit.verify.verifiers.base import Verdict, Verifier, answer_text

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a strict, careful grader of answers to problems. You reply briefly."

# Placeholders: {problem}, {reference}, {rubric}, {answer}; "(none)" stands in for a missing
# reference or rubric. Literal braces in an overriding template must be doubled ({{ }}), as in
# str.format; braces inside the substituted texts (LaTeX) need nothing.
DEFAULT_PROMPT_TEMPLATE = """\
Grade the final answer of a RESPONSE to a PROBLEM.
The answer is correct when it is equivalent to the REFERENCE answer (if one is given) and satisfies
every point of the RUBRIC (if one is given). Equivalent forms count as equal (1/2 and 0.5; "Paris"
and "the city of Paris"). Judge the final answer, not the style or length of the working.

PROBLEM:
{problem}

REFERENCE:
{reference}

RUBRIC:
{rubric}

RESPONSE:
{answer}

Give at most three sentences of justification, then end with one line that is exactly
VERDICT: CORRECT
or exactly
VERDICT: INCORRECT"""

PLACEHOLDERS = frozenset({"problem", "reference", "rubric", "answer"})
_VERDICT_LINE = re.compile(r"VERDICT: (CORRECT|INCORRECT)")


class JudgeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str
    """OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (requests go to {base_url}/chat/completions)."""
    model: str
    """Judge model name as the server knows it; part of the cache key."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (None: send no key)."""
    rubric: str | None = None
    """Criteria for records without a reference answer (proofs, free-form); also shown when one exists."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    """User message; placeholders {problem}, {reference}, {rubric}, {answer}. Must keep {answer}."""
    override_rules: bool = False
    """Judge records that a rule verifier already passed or failed (default: leave them to the rule)."""
    rule_verifiers: list[str] = Field(default_factory=lambda: ["math", "code"])
    """Verifier kinds whose pass/fail verdict the judge defers to."""
    max_tokens: PositiveInt = 512
    """Judge reply budget; a reply cut off before its verdict line is judge_unparseable."""
    temperature: NonNegativeFloat = 0.0
    max_answer_chars: PositiveInt = 8000
    """Longer answers are cut to their last characters (the final answer sits at the end)."""
    max_concurrency: PositiveInt = 8
    timeout_s: PositiveFloat = 120.0
    """Per-request timeout (connect and read)."""
    max_retries: NonNegativeInt = 3
    backoff_s: NonNegativeFloat = 1.0
    """First retry waits about this long (x0.5-1.5 jitter), doubling each retry; capped at 60 s."""
    cache_dir: str | None = None
    """Verdict cache folder (default: $DISTILLKIT_CACHE/judge, i.e. ~/.cache/distillkit/judge)."""
    use_cache: bool = True
    on_unreachable: Literal["error", "cannot_judge"] = "error"
    """error: stop with one DistillkitError; cannot_judge: passed=None, reason judge_unreachable."""

    @field_validator("prompt_template")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        try:
            names = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
        except ValueError as e:
            raise ValueError(f"prompt_template is not a valid format string ({e}); double literal braces") from None
        unknown = names - PLACEHOLDERS
        if unknown:
            raise ValueError(f"prompt_template uses unknown placeholders {sorted(unknown)}; "
                             f"choose from {sorted(PLACEHOLDERS)} (double literal braces: {{{{ }}}})")
        if "answer" not in names:
            raise ValueError("prompt_template must contain {answer}, the text being judged")
        return template


def parse_verdict(reply: str) -> bool | None:
    """True/False from a reply whose last non-empty line is exactly `VERDICT: CORRECT|INCORRECT`, else None."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    if not lines:
        return None
    m = _VERDICT_LINE.fullmatch(lines[-1])
    return None if m is None else m.group(1) == "CORRECT"


@dataclass(frozen=True)
class _Ask:
    key: str
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class _Failed:
    reason: str
    detail: str


def _default_cache_dir() -> Path:
    from distillkit.models import cache_dir

    return cache_dir() / "judge"


class JudgeVerifier(Verifier):
    name = "judge"
    Params = JudgeParams
    # The filter stage passes this run's earlier verdicts as record["prior_verdicts"] to verifiers
    # that set this (they live in the stage, not in the records read from disk).
    reads_prior_verdicts: ClassVar[bool] = True

    def __init__(self, num_workers: int = 1, **params: Any):
        super().__init__(num_workers, **params)
        p = self.params
        self._api_key = None
        if p.api_key_env:
            self._api_key = os.environ.get(p.api_key_env)
            if not self._api_key:
                raise DistillkitError(
                    f"judge: api_key_env={p.api_key_env!r} names an environment variable that is not set; "
                    "export it, or drop api_key_env for a server that needs no key")
        self.url = p.base_url.rstrip("/") + "/chat/completions"
        self.cache_dir = Path(p.cache_dir).expanduser() if p.cache_dir else _default_cache_dir()
        self.counts: Counter = Counter()  # requests, retries, judged, cache_hits, tokens
        self.reasons: Counter = Counter()
        self._client = None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set once the endpoint is down or misconfigured: threads stop early
        self._down: str | None = None  # last error of the request that exhausted its retries
        self._fatal: DistillkitError | None = None

    # ------------------------------------------------------------------ public

    def __call__(self, record: dict[str, Any]) -> Verdict:
        return self.batch([record])[0]

    def batch(self, records: Sequence[dict[str, Any]]) -> list[Verdict]:
        plans = [self._plan(r) for r in records]
        out: list[Verdict | None] = [p if isinstance(p, Verdict) else None for p in plans]
        pending: list[int] = []
        for i, plan in enumerate(plans):
            if isinstance(plan, _Ask):
                cached = self._cache_get(plan.key)
                if cached is not None:
                    out[i] = self._verdict(cached, cached=True)
                else:
                    pending.append(i)
        if pending:
            workers = min(self.params.max_concurrency, len(pending))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="judge") as pool:
                replies = list(pool.map(lambda i: self._ask(plans[i]), pending))
            if self._fatal is not None:
                raise self._fatal
            if self._down is not None and self.params.on_unreachable == "error":
                raise DistillkitError(
                    f"the judge endpoint {self.url} is unreachable ({self._down}) after "
                    f"{self.params.max_retries + 1} attempts; start the judge server or fix the judge "
                    "verifier's base_url, or set on_unreachable: cannot_judge to keep records unjudged")
            for i, reply in zip(pending, replies):
                out[i] = (Verdict(None, reply.reason, reply.detail) if isinstance(reply, _Failed)
                          else self._verdict(reply, cached=False))
        self.reasons.update(v.reason for v in out)  # type: ignore[union-attr]
        return out  # type: ignore[return-value]

    def stats(self) -> dict[str, Any]:
        """Usage for the filter manifest: requests sent (retries included), cache hits, tokens spent
        this run (`prompt_tokens`, `completion_tokens`) and saved by the cache (`cached_*`), and a count
        per verdict reason (`reasons`)."""
        return {**dict(sorted(self.counts.items())), "reasons": dict(sorted(self.reasons.items()))}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ------------------------------------------------------------------ planning

    def _plan(self, record: dict[str, Any]) -> Verdict | _Ask:
        p = self.params
        if not p.override_rules:
            prior = record.get("prior_verdicts") or record.get("verdicts") or []
            for entry in prior:
                kind = str(entry.get("verifier", "")).split("#")[0]  # "math#2": second math step
                if kind in p.rule_verifiers and entry.get("passed") is not None:
                    return Verdict(None, "rule_verdict_kept", f"{entry['verifier']}: {entry.get('reason')}")
        reference = (record.get("gold_answer") or "").strip()
        if not reference and not p.rubric:
            return Verdict(None, "no_reference")
        answer = answer_text(record).strip()
        if not answer:
            return Verdict(None, "no_answer")
        answer = answer[-p.max_answer_chars:]
        user = p.prompt_template.format(problem=(record.get("problem") or "").strip(),
                                        reference=reference or "(none)", rubric=(p.rubric or "(none)").strip(),
                                        answer=answer)
        messages = [{"role": "system", "content": p.system_prompt}] if p.system_prompt else []
        messages.append({"role": "user", "content": user})
        from distillkit.records import stable_hash

        # The messages hold the judged answer, so (judge model, prompt, completion) are all in the key.
        key = stable_hash({"model": p.model, "messages": messages, "max_tokens": p.max_tokens,
                           "temperature": p.temperature}, length=40)
        return _Ask(key, messages)

    def _verdict(self, reply: dict[str, Any], cached: bool) -> Verdict:
        text = reply.get("reply") or ""
        usage = reply.get("usage") or {}
        tokens = {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
                  "completion_tokens": int(usage.get("completion_tokens") or 0)}
        with self._lock:
            prefix = "cached_" if cached else ""
            self.counts[prefix + "prompt_tokens"] += tokens["prompt_tokens"]
            self.counts[prefix + "completion_tokens"] += tokens["completion_tokens"]
            self.counts["cache_hits" if cached else "judged"] += 1
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = json.dumps({**tokens, "cached": cached, "finish_reason": reply.get("finish_reason"),
                             "last_line": (lines[-1] if lines else "")[:200]}, ensure_ascii=False)
        passed = parse_verdict(text)
        if passed is None:
            return Verdict(None, "judge_unparseable", detail)
        return Verdict(passed, "judge_correct" if passed else "judge_incorrect", detail)

    # ------------------------------------------------------------------ cache

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict[str, Any] | None:
        if not self.params.use_cache:
            return None
        path = self._cache_path(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as e:  # writes are atomic, so this is outside damage
            log.warning("judge: ignoring unreadable cache entry %s (%s)", path, e)
            return None

    def _cache_put(self, key: str, reply: dict[str, Any]) -> None:
        if self.params.use_cache:
            from distillkit.records import atomic_write_json

            atomic_write_json(self._cache_path(key), {"key": key, "model": self.params.model, **reply})

    # ------------------------------------------------------------------ transport

    def _http(self):
        with self._lock:
            if self._client is None:
                from distillkit.http import client

                self._client = client(self._api_key, self.params.timeout_s, self.params.max_concurrency)
            return self._client

    def _give_up(self, fatal: DistillkitError | None = None, down: str | None = None) -> None:
        with self._lock:
            if fatal is not None and self._fatal is None:
                self._fatal = fatal
            if down is not None and self._down is None:
                self._down = down
        self._stop.set()

    def _ask(self, plan: _Ask) -> dict[str, Any] | _Failed:
        p = self.params
        unreachable = _Failed("judge_unreachable", f"{self.url} did not answer")
        body = {"model": p.model, "messages": plan.messages, "max_tokens": p.max_tokens,
                "temperature": p.temperature}
        stopped = []

        def before_attempt(attempt: int) -> bool:
            if self._stop.is_set():  # another request gave up on the endpoint
                stopped.append(True)
                return False
            with self._lock:
                self.counts["requests"] += 1
                self.counts["retries"] += attempt > 0
            return True

        r, last = post_with_retries(self._http(), self.url, body, max_retries=p.max_retries,
                                    backoff_s=p.backoff_s, what="judge request", wait=self._stop.wait,
                                    before_attempt=before_attempt)
        if r is None:
            if stopped:
                return unreachable
            self._give_up(down=last)
            return _Failed("judge_unreachable", last)
        if r.status_code < 300:
            return self._read_reply(plan, r)
        last = f"HTTP {r.status_code}: {r.text[:300]}"
        if r.status_code in (401, 403):
            self._give_up(fatal=DistillkitError(
                f"the judge endpoint {self.url} refused the API key (HTTP {r.status_code}); set the "
                f"variable named by api_key_env ({p.api_key_env!r}) to a valid key"))
            return unreachable
        if r.status_code == 404:
            self._give_up(fatal=DistillkitError(
                f"the judge endpoint {self.url} answered {last}; check base_url (the API root, "
                f"usually ending in /v1) and model={p.model!r}"))
            return unreachable
        return _Failed("judge_rejected_request", last)

    def _read_reply(self, plan: _Ask, r) -> dict[str, Any] | _Failed:
        try:
            data = r.json()
            choice = data["choices"][0]
            reply = {"reply": (choice.get("message") or {}).get("content") or "",
                     "finish_reason": choice.get("finish_reason"), "usage": data.get("usage") or {}}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            # Not cached: a broken response says nothing about the answer.
            return _Failed("judge_unparseable", f"malformed response body ({type(e).__name__}): {r.text[:200]}")
        self._cache_put(plan.key, reply)
        return reply
