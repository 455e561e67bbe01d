"""Readability verifiers from the R1 report: truncation, language consistency, repetition, length.

R1 drops "chain-of-thought with mixed languages, long paragraphs, and code blocks" from its cold-start
and rejection-sampled data; these are cheap, dependency-free approximations of those checks.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from distillkit.verify.verifiers.base import Verdict, Verifier


class TruncationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    require_closed_reasoning: bool = True
    """Also reject a trace whose reasoning block never closed (it never reached an answer)."""


class TruncationVerifier(Verifier):
    name = "truncation"
    Params = TruncationParams

    def __call__(self, record: dict[str, Any]) -> Verdict:
        if record.get("finish_reason") == "length":
            return Verdict(False, "truncated_at_max_tokens")
        if self.params.require_closed_reasoning and not record.get("reasoning_closed"):
            return Verdict(False, "unclosed_reasoning")
        return Verdict(True, "complete")


# ----------------------------------------------------------------------------------------- language

# Scripts as the first word of a character's Unicode name ("LATIN SMALL LETTER A", "CJK UNIFIED ...").
_SCRIPT_ALIASES = {"CJK": "han", "HIRAGANA": "hiragana", "KATAKANA": "katakana", "HANGUL": "hangul"}


def char_script(ch: str) -> str | None:
    """Lower-case script name of a letter ("latin", "han", "cyrillic", ...), None for non-letters."""
    if not ch.isalpha():
        return None
    try:
        first = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return "unknown"
    return _SCRIPT_ALIASES.get(first, first.lower())


def script_shares(text: str) -> tuple[Counter, int]:
    counts = Counter(s for s in map(char_script, text) if s is not None)
    return counts, sum(counts.values())


class LanguageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scripts: list[str] = Field(default_factory=lambda: ["latin"])
    """Scripts of the target language: ["latin"] for English, ["han", "hiragana", "katakana"] for Japanese."""
    ignore_scripts: list[str] = Field(default_factory=lambda: ["greek"])
    """Letters not counted either way (Greek letters are ordinary in maths)."""
    min_share: float = Field(0.95, ge=0, le=1)
    """Minimum share of the counted letters that must be in `scripts`."""
    min_letters: NonNegativeInt = 20
    """Below this many letters the share means little: the verdict is None (`too_short_to_judge`)."""
    field: Literal["reasoning", "completion", "response"] = "reasoning"


class LanguageVerifier(Verifier):
    name = "language"
    Params = LanguageParams

    def __call__(self, record: dict[str, Any]) -> Verdict:
        p = self.params
        text = record.get(p.field) or ("" if p.field != "reasoning" else record.get("completion") or "")
        counts, _ = script_shares(text)
        for s in p.ignore_scripts:
            counts.pop(s, None)
        total = sum(counts.values())
        if total < p.min_letters:
            return Verdict(None, "too_short_to_judge", f"{total} letters")
        share = sum(counts[s] for s in p.scripts) / total
        if share < p.min_share:
            others = ", ".join(f"{s} {n / total:.0%}" for s, n in counts.most_common() if s not in p.scripts)
            return Verdict(False, "language_mixed", f"{share:.0%} in {p.scripts}; {others}")
        return Verdict(True, "consistent_language", f"{share:.0%}")


# ----------------------------------------------------------------------------------------- repetition

_WORD = re.compile(r"\w+|[^\w\s]")


def repeated_ngram_ratio(words: list[str], n: int) -> float:
    """Share of word n-grams that are repeats of an earlier one (0: all distinct, ->1: one n-gram)."""
    if len(words) < n + 1:
        return 0.0
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def tail_loop(text: str, max_period: int = 200, min_repeats: int = 4, min_chars: int = 200) -> int | None:
    """Period (in characters) of a loop the text ends in, or None.

    A generation stuck in a loop ends with the same span repeated until max_tokens: we check whether
    the tail is periodic with some period p, repeated at least `min_repeats` times and covering at
    least `min_chars` characters (so "......" or "1 1 1" in a table is not a loop).
    """
    text = text.rstrip()
    for period in range(1, max_period + 1):
        repeats = max(min_repeats, -(-min_chars // period))
        span = period * repeats
        if span > len(text):
            continue
        tail = text[-span:]
        if tail == tail[-period:] * repeats:
            return period
    return None


class RepetitionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ngram: PositiveInt = 8
    """Words per n-gram for the repeated n-gram ratio."""
    max_repeated_ratio: float = Field(0.3, ge=0, le=1)
    """Reject when more than this share of the n-grams repeat an earlier one."""
    max_loop_period: PositiveInt = 200
    min_loop_repeats: int = Field(4, ge=2)
    min_loop_chars: PositiveInt = 200
    field: Literal["reasoning", "completion"] = "completion"


class RepetitionVerifier(Verifier):
    name = "repetition"
    Params = RepetitionParams

    def __call__(self, record: dict[str, Any]) -> Verdict:
        p = self.params
        text = record.get(p.field) or ""
        period = tail_loop(text, p.max_loop_period, p.min_loop_repeats, p.min_loop_chars)
        if period is not None:
            return Verdict(False, "repetition_loop", f"ends in a loop of period {period} chars")
        ratio = repeated_ngram_ratio(_WORD.findall(text.lower()), p.ngram)
        if ratio > p.max_repeated_ratio:
            return Verdict(False, "repeated_ngrams", f"{ratio:.0%} of {p.ngram}-grams repeat")
        return Verdict(True, "not_repetitive", f"{ratio:.0%}")


# ----------------------------------------------------------------------------------------- length


class LengthParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_tokens: NonNegativeInt = 0
    max_tokens: Optional[PositiveInt] = None


class LengthVerifier(Verifier):
    name = "length"
    Params = LengthParams

    def __call__(self, record: dict[str, Any]) -> Verdict:
        n = int(record.get("completion_tokens") or 0)
        how = "tokens"
        if n == 0 and record.get("completion"):
            # Records from a backend that did not count tokens: whitespace words undercount by ~25%.
            n, how = len(record["completion"].split()), "words (no token count)"
        if n < self.params.min_tokens:
            return Verdict(False, "too_short", f"{n} {how} < {self.params.min_tokens}")
        if self.params.max_tokens is not None and n > self.params.max_tokens:
            return Verdict(False, "too_long", f"{n} {how} > {self.params.max_tokens}")
        return Verdict(True, "length_ok", f"{n} {how}")
