"""Math verifier: the last `\\boxed{...}` of the answer compared with the gold answer by math-verify.

math-verify (imported only where a comparison runs, it takes ~1 s to import) decides equivalence
across forms: 1/2 vs 0.5, 2\\sqrt{2} vs \\sqrt{8}, set order, intervals, `x=3` vs 3, units and
`\\text{...}` stripped. Comparisons run in a `TimeoutPool` with a per-record wall-clock limit, so a
pathological expression (sympy expanding 9^{9^{9^{9}}}) costs one worker restart, not the run.

`verify_math_answer(text, gold)` is the same judgement for one answer section in this process (no pool),
used where one implementation must serve two callers: distillkit's R1 evaluation tasks score with it.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from distillkit.verify.verifiers.base import Verdict, Verifier, answer_text

# With our outer timeout in place, math-verify warns on every call that its own one is off.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed +([^\s$]+)")  # "\boxed 5" is valid LaTeX for a one-token argument
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*[:\s]*\$?([^\n$]+?)\$?\s*(?:\.|\n|$)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _match_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, honouring nesting and `\\{`/`\\}` escapes."""
    depth = 0
    i = open_index
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped brace (\{ \}) is content, not structure
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


# What may stand between the boxes of one answer given in parts: "$\\boxed{3}$, $\\boxed{5}$, and $\\boxed{7}$",
# "\\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}". Any other word between two boxes (a draft, "or equivalently")
# keeps them apart and the last one is the answer.
_BOX_JOINER = re.compile(r"(?:[\s$,;.]|\\[,;!:]|\\q?quad|\\text\s*\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b|\\\(|\\\)"
                         r"|\\\[|\\\])*")


def boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every complete `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5` in `text`, in order."""
    spans = []
    for m in _BOXED.finditer(text):
        end = _match_brace(text, m.end() - 1)
        if end is not None:
            spans.append((m.start(), end + 1, text[m.end():end].strip()))
    spans += [(m.start(), m.end(), m.group(1).strip()) for m in _BOXED_BARE.finditer(text)]
    return sorted(spans)


def extract_boxed(text: str) -> str | None:
    """The final boxed answer of `text`, else None.

    The last non-empty box (an empty `\\boxed{}` counts only when every box is empty: "\\boxed{27} (written
    within \\boxed{} as asked)" answers 27). When the boxes just before it are separated from it by
    nothing but commas, "and"/"or", spaces and math delimiters, the answer was given in parts and they are
    joined: "$\\boxed{3}$, $\\boxed{5}$ and $\\boxed{7}$" -> "3, 5, 7" (repeats once).
    """
    spans = boxed_spans(text)
    if not spans:
        return None
    full = [sp for sp in spans if sp[2]]
    if not full:
        return ""
    group = [full[-1]]
    for prev in reversed(full[:-1]):
        if not _BOX_JOINER.fullmatch(text[prev[1]:group[0][0]]):
            break
        group.insert(0, prev)
    parts = list(dict.fromkeys(sp[2] for sp in group))
    return ", ".join(parts)


def extract_answer(text: str, fallbacks: Sequence[str] = ()) -> tuple[str | None, str]:
    """(answer, how) where `how` is "boxed", a fallback's name, or "" when nothing was found."""
    boxed = extract_boxed(text)
    if boxed is not None:  # an empty \boxed{} is an answer (a wrong one), not a reason to look elsewhere
        return boxed, "boxed"
    for name in fallbacks:
        if name == "answer_is":
            found = _ANSWER_IS.findall(text)
            if found:
                return found[-1].strip(), name
        elif name == "last_number":
            found = _NUMBER.findall(text)
            if found:
                return found[-1].replace(",", ""), name
    return None, ""


def _as_latex(text: str) -> str:
    """math-verify finds answers inside math delimiters; a bare `1/2` must be wrapped to be parsed."""
    stripped = text.strip()
    if stripped.startswith(("$", "\\(", "\\[")):
        return stripped
    return f"${stripped}$"


@functools.cache
def warm_up() -> None:
    """Import math-verify and run one comparison, so the first real task is not charged for it (once per process)."""
    from math_verify import parse, verify

    verify(parse("$1$"), parse("$1$"))


def compare(gold: str, answer: str, timeout_s: int | None = None) -> tuple[bool, str]:
    """(equivalent, why-not) for one pair; runs inside a worker process.

    math-verify's own SIGALRM timeouts are switched off by default (`timeout_s=None`): when they fire it
    returns False quietly, which would read as `wrong_answer`. The pool's outer timeout reports
    `verify_timeout` instead. Callers without a pool pass `timeout_s` (main thread only).
    """
    from math_verify import parse, verify

    gold_parsed = parse(_as_latex(gold), parsing_timeout=timeout_s)
    if not gold_parsed:
        return False, "unparsable_gold"
    answer_parsed = parse(_as_latex(answer), parsing_timeout=timeout_s)
    if not answer_parsed:
        return False, "unparsable_answer"
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout_s)), ""


def _answer_or_verdict(answer_section: str, gold: str, fallbacks: Sequence[str]) -> tuple[str, Verdict | None]:
    """The extracted answer to compare with `gold` (already stripped), or the verdict reached without
    comparing: no gold, no answer, an empty box."""
    if not gold:
        return "", Verdict(None, "no_gold_answer")
    answer, _how = extract_answer(answer_section, fallbacks)
    if answer is None:
        return "", Verdict(False, "no_boxed_answer")
    if not answer:
        return "", Verdict(False, "empty_boxed_answer")
    return answer, None


def _comparison_verdict(gold: str, answer: str, ok: bool, why: str) -> Verdict:
    """The verdict for a finished comparison (`compare`'s result)."""
    if ok:
        return Verdict(True, "correct", f"{answer!r} == {gold!r}")
    if why == "unparsable_gold":
        return Verdict(None, "unparsable_gold", gold)
    if why == "unparsable_answer":
        return Verdict(False, "unparsable_answer", answer)
    return Verdict(False, "wrong_answer", f"{answer!r} != {gold!r}")


@functools.lru_cache(maxsize=65536)
def _compare_cached(gold: str, answer: str, timeout_s: int | None) -> tuple[bool, str]:
    # k samples of one question mostly repeat a few answers: each pair is parsed once.
    return compare(gold, answer, timeout_s)


def verify_math_answer(answer_section: str, gold: str, fallbacks: Sequence[str] = (),
                       timeout_s: int = 5) -> Verdict:
    """The math verifier's verdict on one final-answer section (the text after `</think>`), in this process.

    Same extraction (last `\\boxed{}`, then `fallbacks`), same comparison and same reasons as
    `MathVerifier`, without its worker pool. The wall-clock limit is math-verify's own SIGALRM
    timeout, which works only in the main thread: elsewhere the comparison runs unlimited. A timeout
    reads as `unparsable_answer`/`wrong_answer` (math-verify gives up quietly), never as correct.
    """
    gold = (gold or "").strip()
    answer, verdict = _answer_or_verdict(answer_section or "", gold, fallbacks)
    if verdict is not None:
        return verdict
    limit = timeout_s if threading.current_thread() is threading.main_thread() else None
    try:
        warm_up()  # the first call's imports (seconds on a loaded box) must not eat the first answer's time limit
        ok, why = _compare_cached(gold, answer, limit)
    except Exception as e:  # math-verify raised: cannot judge, but never silently pass
        return Verdict(False, "verify_error", f"{type(e).__name__}: {e}")
    return _comparison_verdict(gold, answer, ok, why)


class MathParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fallbacks: list[Literal["answer_is", "last_number"]] = Field(default_factory=list)
    """Where to look when there is no \\boxed{}: "the answer is X", then the last number. Off by default
    (R1 asks for \\boxed{}; a trace that ignores the instruction is a worse teacher)."""
    timeout_s: float = Field(10.0, gt=0)
    """Wall-clock seconds allowed for one comparison before `verify_timeout`."""


class MathVerifier(Verifier):
    """Passes a record whose final answer is equivalent to `gold_answer`."""

    name = "math"
    Params = MathParams

    def __init__(self, num_workers: int = 1, **params: Any):
        super().__init__(num_workers, **params)
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            from distillkit.errors import require
            from distillkit.verify.workers import TimeoutPool

            require("math_verify", "filter", "the math verifier needs `math-verify`")
            self._pool = TimeoutPool(f"{__name__}:compare", num_workers=self.num_workers,
                                     timeout_s=self.params.timeout_s, warmup_path=f"{__name__}:warm_up")
        return self._pool

    def __call__(self, record: dict[str, Any]) -> Verdict:
        return self.batch([record])[0]

    def batch(self, records: Sequence[dict[str, Any]], on_done=None) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(records)
        pairs: dict[tuple[str, str], list[int]] = {}  # many samples share an answer: compare each pair once
        for i, rec in enumerate(records):
            gold = (rec.get("gold_answer") or "").strip()
            answer, verdict = _answer_or_verdict(answer_text(rec), gold, self.params.fallbacks)
            if verdict is not None:
                verdicts[i] = verdict
                continue
            pairs.setdefault((gold, answer), []).append(i)
        if pairs:
            keys = list(pairs)
            results = self._get_pool().map(keys)
            for key, res in zip(keys, results):
                if res.status == "ok":
                    v = _comparison_verdict(key[0], key[1], *res.value)
                elif res.status == "timeout":
                    v = Verdict(False, "verify_timeout", res.error)
                else:  # math-verify raised or its worker died: cannot judge, but never silently pass
                    v = Verdict(False, "verify_error", res.error)
                for i in pairs[key]:
                    verdicts[i] = v
        if on_done:
            on_done(len(records))
        return verdicts  # type: ignore[return-value]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
