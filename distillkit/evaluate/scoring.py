"""Scoring model answers against gold answers with math-verify, and lm-eval hooks built on it.

math-verify parses LaTeX and plain expressions into sympy and compares values, so `1/2` matches
`0.5`, `\\frac{1}{2}` and `2\\sqrt{2}` matches `\\sqrt{8}`: a regex on `\\boxed{...}` gets those wrong.
"""

from __future__ import annotations

import logging
import threading
from statistics import fmean
from typing import Any

from distillkit.errors import require

log = logging.getLogger(__name__)


def _timeout(seconds: int) -> int | None:
    # math-verify enforces timeouts with SIGALRM, which only works in the main thread; elsewhere
    # `parse` raises. Off the main thread we give up the timeout rather than the verification.
    return seconds if threading.current_thread() is threading.main_thread() else None


def parse_gold(gold: str) -> list:
    """A gold answer as math-verify expressions; a bare string is read as LaTeX math (`$...$`)."""
    mv = require("math_verify", "eval", "scoring math answers needs math-verify")
    text = gold.strip()
    if not text.startswith("$") and "\\boxed" not in text:
        text = f"${text}$"
    return mv.parse(text, extraction_config=[mv.LatexExtractionConfig(), mv.ExprExtractionConfig()],
                    parsing_timeout=_timeout(5))


def parse_prediction(response: str) -> list:
    """The final answer of a response: the last \\boxed{} first, else the last LaTeX or plain expression."""
    mv = require("math_verify", "eval", "scoring math answers needs math-verify")
    config = [mv.LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=True),
              mv.ExprExtractionConfig()]
    return mv.parse(response, extraction_config=config, parsing_timeout=_timeout(5))


def score_math(response: str, gold: str) -> bool | None:
    """True/False when `response` does/does not give `gold`; None when the gold itself cannot be parsed."""
    mv = require("math_verify", "eval", "scoring math answers needs math-verify")
    gold_parsed = parse_gold(str(gold))
    if not gold_parsed:
        return None
    pred = parse_prediction(response or "")
    if not pred:
        return False
    return bool(mv.verify(gold_parsed, pred, timeout_seconds=_timeout(5)))


# ----------------------------------------------------------------------------------- lm-eval hooks
# Local task YAMLs point at these through a two-line utils.py next to the YAML (lm-eval resolves
# `!function utils.name` relative to the YAML file).


def keep_all_samples(resps, docs):
    """lm-eval filter: keep every one of the `repeats` responses (the default keeps only the first)."""
    return resps


def process_math_samples(doc: dict[str, Any], results: list) -> dict[str, float]:
    """lm-eval process_results for one question and its k samples: pass@1 = share of correct samples.

    With the `keep_all_samples` filter, `results` is `[[response_1, ..., response_k]]`.
    """
    responses = results[0]
    if isinstance(responses, str):  # a filter that kept one response
        responses = [responses]
    gold = doc.get("answer", doc.get("Answer"))
    verdicts = [score_math(r, str(gold)) for r in responses]
    if any(v is None for v in verdicts):
        log.warning("gold answer %r of question %r cannot be parsed; its samples count as wrong",
                    gold, doc.get("id"))
    return {"pass@1": fmean(1.0 if v else 0.0 for v in verdicts)}
