"""lm-eval hooks of distillkit's R1-protocol tasks: r1_aime24, r1_aime25, r1_math500, r1_gpqa_diamond.

R1's protocol (DeepSeek-R1 README, "Usage Recommendations"): no system prompt, every instruction in the
user turn, for math "Please reason step by step, and put your final answer within \\boxed{}.", and the
answer is what follows the reasoning: drafts inside `<think>...</think>` do not count.

One implementation with the filter: the answer section is cut with `distillkit.records.split_reasoning`
(what the generate stage stores as `response`) and math answers are judged by the filter's math verifier
(`verify_math_answer`: last `\\boxed{}`, no fallbacks, math-verify). A trace the filter keeps as correct
is scored correct here, and the other way round. Rules, with the verdict's reason:
- no `</think>` in the response (unclosed reasoning, e.g. cut at the token limit): wrong,
  `unclosed_reasoning`, whatever the reasoning contains;
- no complete `\\boxed{}` after `</think>`: wrong, `no_boxed_answer` ("The answer is 13." unboxed
  included: the filter's default, since R1's instruction asks for the box);
- math: math-verify equivalence with the gold answer (`correct`, `wrong_answer`, ...);
- GPQA: the boxed letter (A-D, optionally "(C)", "C)", "\\text{C}", "C) <option text>") equals the
  correct option's letter after the per-question shuffle (`correct`, `wrong_answer`, `not_a_choice`).

Each response gets a 0/1 score (`pass@1`) and `reasoning_closed`. The tasks draw one response per
question (`repeats: 1`); distillkit's evaluate stage draws `evaluate.num_samples` per question with the
task's own scoring (`distillkit.evaluate.protocol.sample_each`) and reports pass@1 ± se and pass@k.
"""

from __future__ import annotations

import hashlib
import logging
import re
from statistics import fmean
from typing import Any

from distillkit.config import R1_PROMPT
from distillkit.records import split_reasoning
from distillkit.verify.verifiers.base import Verdict
from distillkit.verify.verifiers.math import extract_boxed, verify_math_answer

log = logging.getLogger(__name__)

# The filter's math verifier default: no "the answer is X" / last-number fallbacks.
MATH_FALLBACKS: tuple[str, ...] = ()
LETTERS = "ABCD"
# R1's instruction asks for "your final answer"; for multiple choice that must be the letter. Wording of
# the letter sentence as in Evalchemy's GPQA-Diamond prompt (mlfoundations/evalchemy, GPQADiamond).
GPQA_LETTER_INSTRUCTION = " Only include the letter choice (A, B, C, or D) as your final answer."

_warned_unclosed = False


# ------------------------------------------------------------------------------------------ prompts


def math_prompt(doc: dict[str, Any]) -> str:
    """The user turn: the problem, then R1's instruction (as the generate stage writes it)."""
    return R1_PROMPT.replace("{problem}", doc["problem"])


def gpqa_options(doc: dict[str, Any]) -> tuple[list[str], str]:
    """The four options of a GPQA row in their shuffled order, and the correct option's letter.

    The order is a permutation ranked by sha256("<Record ID>/<i>"): fixed per question, independent of
    the dataset's row order, the Python version and any global seed, and uniform over questions.
    (open-r1/lighteval insert the correct answer at `random.randint(0, 3)` from the process-wide RNG,
    so their letters depend on seeding and row order.) Without a `Record ID` the question text keys it.
    """
    key = str(doc.get("Record ID") or doc["Question"])
    answers = [doc["Correct Answer"], doc["Incorrect Answer 1"], doc["Incorrect Answer 2"], doc["Incorrect Answer 3"]]
    order = sorted(range(4), key=lambda i: hashlib.sha256(f"{key}/{i}".encode()).digest())
    return [str(answers[i]).strip() for i in order], LETTERS[order.index(0)]


def process_gpqa_docs(dataset):
    """lm-eval process_docs: adds `options` (shuffled) and `gold_letter` to every row."""

    def add_options(doc):
        options, letter = gpqa_options(doc)
        return {"options": options, "gold_letter": letter}

    return dataset.map(add_options)


def gpqa_prompt(doc: dict[str, Any]) -> str:
    """The user turn: question, options "A) ..." to "D) ...", R1's instruction, the letter sentence."""
    body = doc["Question"].strip() + "\n\n" + "\n".join(f"{l}) {o}" for l, o in zip(LETTERS, doc["options"]))
    return R1_PROMPT.replace("{problem}", body) + GPQA_LETTER_INSTRUCTION


# ------------------------------------------------------------------------------------------ verdicts


def answer_section(response: str) -> str | None:
    """The text after `</think>` (the filter's split), or None when the reasoning never closed."""
    global _warned_unclosed
    _reasoning, section, closed = split_reasoning(response or "")
    if not closed and not _warned_unclosed:
        _warned_unclosed = True
        log.warning("a response has no </think>: it counts as wrong (unclosed reasoning). If every response "
                    "does, check that lm-eval's model_args do not set think_end_token: lm-eval then cuts the "
                    "reasoning and the tag off before scoring, and the R1 tasks can no longer tell")
    return section if closed else None


def judge_math(response: str, gold: Any) -> Verdict:
    """Verdict on one response to a math question with gold answer `gold`."""
    section = answer_section(response)
    if section is None:
        return Verdict(False, "unclosed_reasoning")
    return verify_math_answer(section, str(gold), MATH_FALLBACKS)


_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mathit)\s*\{([^{}]*)\}")
_CHOICE = re.compile(r"\(?([A-D])\)?[.:]?")  # C, (C), C), C., C:
_CHOICE_WITH_TEXT = re.compile(r"(?:\(([A-D])\)|([A-D])[.:)])\s+\S.*", re.S)  # (C) 4 eV, C) 4 eV, C. 4 eV


def read_choice(boxed: str) -> str | None:
    """The option letter a boxed answer names ("C", "(C)", "\\text{C}", "C) 4 eV"), else None."""
    text = boxed.strip()
    while (unwrapped := _WRAPPER.sub(r"\1", text).strip()) != text:
        text = unwrapped
    text = text.strip("$ ")
    if match := _CHOICE.fullmatch(text):
        return match.group(1)
    if match := _CHOICE_WITH_TEXT.fullmatch(text):
        return match.group(1) or match.group(2)
    return None


def judge_choice(response: str, gold_letter: str) -> Verdict:
    """Verdict on one response to a multiple-choice question whose correct option is `gold_letter`."""
    section = answer_section(response)
    if section is None:
        return Verdict(False, "unclosed_reasoning")
    boxed = extract_boxed(section)
    if boxed is None:
        return Verdict(False, "no_boxed_answer")
    letter = read_choice(boxed)
    if letter is None:
        return Verdict(False, "not_a_choice", boxed)
    if letter == gold_letter:
        return Verdict(True, "correct", letter)
    return Verdict(False, "wrong_answer", f"{letter} != {gold_letter}")


# ------------------------------------------------------------------------------------ lm-eval hooks


def _responses(results: list) -> list[str]:
    # lm-eval's default take_first filter gives one string; a keep-all filter gives the list of k.
    first = results[0]
    return [first] if isinstance(first, str) else list(first)


def _scores(responses: list[str], verdicts: list[Verdict]) -> dict[str, float]:
    return {"pass@1": fmean(1.0 if v.passed else 0.0 for v in verdicts),
            "reasoning_closed": fmean(1.0 if split_reasoning(r or "")[2] else 0.0 for r in responses)}


def process_math_results(doc: dict[str, Any], results: list) -> dict[str, float]:
    """lm-eval process_results of the math tasks: share of correct responses, share closing `</think>`."""
    responses = _responses(results)
    verdicts = [judge_math(r, doc["answer"]) for r in responses]
    if any(v.reason == "unparsable_gold" for v in verdicts):
        log.warning("gold answer %r cannot be parsed by math-verify; its responses count as wrong", doc["answer"])
    return _scores(responses, verdicts)


def process_gpqa_results(doc: dict[str, Any], results: list) -> dict[str, float]:
    """lm-eval process_results of GPQA: share of responses boxing the correct letter, share closing `</think>`."""
    responses = _responses(results)
    return _scores(responses, [judge_choice(r, doc["gold_letter"]) for r in responses])
