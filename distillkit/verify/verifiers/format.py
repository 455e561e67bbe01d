"""Format verifier: exactly one reasoning block, a non-empty answer after it, in the required form."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from distillkit.verify.verifiers.base import Verdict, Verifier
from distillkit.verify.verifiers.code import extract_code
from distillkit.verify.verifiers.math import extract_boxed


class FormatParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    answer_form: Literal["auto", "boxed", "code", "any"] = "auto"
    """auto: boxed when the record has a gold answer, a code block when it has tests, else anything."""
    allow_empty_reasoning: bool = False


class FormatVerifier(Verifier):
    name = "format"
    Params = FormatParams

    def __call__(self, record: dict[str, Any]) -> Verdict:
        p = self.params
        # R1 templates pre-fill "<think>\n", so the completion itself lacks the opening tag.
        full = (record.get("prefill") or "") + (record.get("completion") or "")
        opens, closes = full.count(p.open_tag), full.count(p.close_tag)
        if closes == 0:
            return Verdict(False, "unclosed_reasoning")
        if opens > 1 or closes > 1:
            return Verdict(False, "multiple_reasoning_blocks", f"{opens} open, {closes} close tags")
        if opens == 0:
            return Verdict(False, "missing_open_tag")
        head, _, answer = full.partition(p.close_tag)
        before, _, reasoning = head.partition(p.open_tag)
        if before.strip():
            return Verdict(False, "text_before_reasoning", before.strip()[:80])
        if not reasoning.strip() and not p.allow_empty_reasoning:
            return Verdict(False, "empty_reasoning")
        if not answer.strip():
            return Verdict(False, "empty_answer")
        form = p.answer_form
        if form == "auto":
            form = "boxed" if record.get("gold_answer") else "code" if record.get("tests") else "any"
        if form == "boxed" and extract_boxed(answer) is None:
            return Verdict(False, "answer_not_boxed")
        if form == "code" and extract_code(answer) is None:
            return Verdict(False, "answer_without_code_block")
        return Verdict(True, "well_formed")
