"""The verifier protocol: a record in, a `Verdict` (passed true/false/none and a snake_case reason) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Verdict:
    """What one verifier says about one record.

    `passed` is None when the verifier cannot judge (no gold answer, no tests): the record is kept or
    rejected as its spec's `on_cannot_judge` says, and the funnel counts it under its reason so a user
    sees how much went unchecked. A reason in DEFERRED means the verifier left the record to another
    one's verdict (the judge keeping a rule's): neither policy nor warning applies to it.
    """

    passed: bool | None
    reason: str
    detail: str = ""

    def as_record_entry(self, verifier: str) -> dict[str, Any]:
        """The entry stored in a record's `verdicts` column (the schema has no `detail` field)."""
        return {"verifier": verifier, "passed": self.passed, "reason": self.reason}


DEFERRED = frozenset({"rule_verdict_kept"})
"""passed=None reasons that defer to another verifier's verdict rather than fail to judge."""


def fails(v: Verdict, rejects_unjudged: bool) -> bool:
    """Whether `v` removes its record: a rejection, or "cannot judge" under an on_cannot_judge=reject policy."""
    return v.passed is False or (v.passed is None and rejects_unjudged and v.reason not in DEFERRED)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Verifier:
    """Base of every verifier. Subclasses set `name` and `Params` and implement `__call__`.

    Verifiers that are expensive per record (math, code) override `batch` to work in parallel and
    `close` to release their worker processes. Use as a context manager to close reliably.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, num_workers: int = 1, **params: Any):
        self.params = self.Params.model_validate(params)
        self.num_workers = max(1, int(num_workers))

    def __call__(self, record: dict[str, Any]) -> Verdict:
        raise NotImplementedError

    def batch(self, records: Sequence[dict[str, Any]]) -> list[Verdict]:
        return [self(r) for r in records]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def answer_text(record: dict[str, Any]) -> str:
    """The final-answer section: the text after `</think>`, or the whole completion when unclosed.

    An unclosed reasoning block is the truncation verifier's business; here we still look for an
    answer so that math/code verdicts stay informative on their own.
    """
    response = record.get("response")
    if response is not None and record.get("reasoning_closed", response is not None):
        return response
    return (record.get("prefill") or "") + (record.get("completion") or "")
