"""Code, format and readability verifiers on literal inputs, adversarial ones included; plus the registry."""

import json

import pytest

from distillkit.config import VerifierSpec
from distillkit.registry import build
from distillkit.verify.verifiers.code import CodeVerifier, extract_code
from distillkit.verify.verifiers.format import FormatVerifier
from distillkit.verify.verifiers.readability import (LanguageVerifier, LengthVerifier, RepetitionVerifier,
                                                     TruncationVerifier, tail_loop)

ADD_TESTS = json.dumps([{"type": "assert", "code": "assert add(1, 2) == 3"},
                        {"type": "assert", "code": "assert add(-1, 1) == 0"}])
STDIO_TESTS = json.dumps([{"type": "stdio", "input": "2 3\n", "output": "5\n"},
                          {"type": "stdio", "input": "10 -4\n", "output": "6"}])


def code_rec(body, tests=ADD_TESTS, lang="python"):
    return {"response": f"Here it is:\n```{lang}\n{body}\n```", "reasoning_closed": True, "tests": tests}


@pytest.fixture(scope="module")
def code():
    return CodeVerifier(num_workers=2, timeout_s=2)


@pytest.mark.parametrize("body, tests, reason", [
    ("def add(a, b):\n    return a + b", ADD_TESTS, "tests_passed"),
    ("def add(a, b):\n    return a - b", ADD_TESTS, "tests_failed"),
    ("a, b = map(int, input().split())\nprint(a + b)", STDIO_TESTS, "tests_passed"),
    ("a, b = map(int, input().split())\nprint(a * b)", STDIO_TESTS, "tests_failed"),
    ("def add(a, b)\n    return a + b", ADD_TESTS, "syntax_error"),
    ("def add(a, b):\n    while True:\n        pass", ADD_TESTS, "timeout"),
    ("x = bytearray(8 * 2**30)\ndef add(a, b):\n    return a + b", ADD_TESTS, "memory_exceeded"),
    # Adversarial: exiting with success before the asserts run must not count as passing them.
    ("import sys\ndef add(a, b):\n    return 0\nsys.exit(0)", ADD_TESTS, "tests_failed"),
    ("import os\ndef add(a, b):\n    return 0\nos._exit(0)", ADD_TESTS, "tests_failed"),
])
def test_code_verdicts(code, body, tests, reason):
    v = code(code_rec(body, tests))
    assert v.reason == reason, v
    assert v.passed is (reason == "tests_passed")


def test_code_without_block_or_tests(code):
    assert code({"response": "def add(a, b): return a + b", "reasoning_closed": True, "tests": ADD_TESTS}).reason == "no_code_block"
    v = code(code_rec("print(1)", tests=None))
    assert (v.passed, v.reason) == (None, "no_tests")


def test_code_batch_in_threads_keeps_order(code):
    recs = [code_rec("def add(a, b):\n    return a + b"), code_rec("def add(a, b):\n    return 0")] * 2
    assert [v.reason for v in code.batch(recs)] == ["tests_passed", "tests_failed"] * 2


def test_extract_code_takes_the_last_python_block():
    text = "```python\nold()\n```\ntext\n```bash\nrm -rf /\n```\n```py\nnew()\n```"
    assert extract_code(text).strip() == "new()"
    assert extract_code("```python\n\n```") is None


@pytest.mark.parametrize("prefill, completion, gold, reason", [
    ("<think>\n", "2+2 is 4.\n</think>\nSo \\boxed{4}.", "4", "well_formed"),
    ("", "<think>2+2 is 4.</think>\\boxed{4}", "4", "well_formed"),
    ("<think>\n", "thinking forever", "4", "unclosed_reasoning"),
    ("<think>\n", "a</think>b<think>c</think>\\boxed{4}", "4", "multiple_reasoning_blocks"),
    ("", "2+2 is 4.</think>\\boxed{4}", "4", "missing_open_tag"),
    ("", "Sure! <think>2+2</think>\\boxed{4}", "4", "text_before_reasoning"),
    ("<think>\n", "\n</think>\\boxed{4}", "4", "empty_reasoning"),
    ("<think>\n", "2+2 is 4.</think>  \n", "4", "empty_answer"),
    ("<think>\n", "2+2 is 4.</think>The answer is 4.", "4", "answer_not_boxed"),
    ("<think>\n", "2+2 is 4.</think>The answer is 4.", None, "well_formed"),  # no gold: any answer form
])
def test_format_verdicts(prefill, completion, gold, reason):
    v = FormatVerifier()({"prefill": prefill, "completion": completion, "gold_answer": gold})
    assert v.reason == reason
    assert v.passed is (reason == "well_formed")


def test_format_code_answer_needs_a_block():
    rec = {"prefill": "<think>\n", "completion": "plan</think>def f(): pass", "tests": ADD_TESTS}
    assert FormatVerifier()(rec).reason == "answer_without_code_block"


@pytest.mark.parametrize("finish, closed, reason", [
    ("stop", True, "complete"), ("length", False, "truncated_at_max_tokens"),
    ("length", True, "truncated_at_max_tokens"), ("stop", False, "unclosed_reasoning")])
def test_truncation(finish, closed, reason):
    assert TruncationVerifier()({"finish_reason": finish, "reasoning_closed": closed}).reason == reason


ENGLISH = "First we add the two numbers together and then we check the result carefully. "


@pytest.mark.parametrize("reasoning, reason", [
    (ENGLISH * 3, "consistent_language"),
    (ENGLISH * 3 + "然后我们需要计算两个数字的总和以及它们的差值并且验证答案是否正确无误", "language_mixed"),
    (ENGLISH + "Теперь сложим два числа и проверим результат очень внимательно еще раз", "language_mixed"),
    (ENGLISH * 3 + "so α + β = π and θ is small", "consistent_language"),  # Greek maths letters are ignored
    ("2+2=4", "too_short_to_judge"),
])
def test_language(reasoning, reason):
    v = LanguageVerifier()({"reasoning": reasoning})
    assert v.reason == reason
    assert v.passed is {"consistent_language": True, "language_mixed": False, "too_short_to_judge": None}[reason]


def test_language_for_a_chinese_target():
    v = LanguageVerifier(scripts=["han"])({"reasoning": "然后我们需要计算两个数字的总和以及它们的差值并且验证答案是否正确无误"})
    assert v.reason == "consistent_language"


@pytest.mark.parametrize("completion, reason", [
    (ENGLISH + "Then 3 * 4 = 12, and 12 + 5 = 17, so the total is \\boxed{17}.", "not_repetitive"),
    (ENGLISH + "Wait, let me recompute. " * 40, "repetition_loop"),
    (ENGLISH + "ab" * 300, "repetition_loop"),  # a loop without spaces is still a loop
    ("Let me check the sum again and again. " * 10 + "Something new at the end " * 1 + "\\boxed{3}", "repeated_ngrams"),
    ("The table: 1 1 1 1 1 1. " + ENGLISH, "not_repetitive"),  # a short run is not a loop
])
def test_repetition(completion, reason):
    v = RepetitionVerifier()({"completion": completion})
    assert v.reason == reason, v


def test_tail_loop_reports_the_period():
    assert tail_loop("intro " + "abc" * 100) == 3
    assert tail_loop("no loop at all here") is None


@pytest.mark.parametrize("tokens, completion, reason", [
    (50, "x", "length_ok"), (5, "x", "too_short"), (5000, "x", "too_long"),
    (0, "one two three", "too_short"),  # no token count: words are counted instead
])
def test_length(tokens, completion, reason):
    v = LengthVerifier(min_tokens=10, max_tokens=4096)({"completion_tokens": tokens, "completion": completion})
    assert v.reason == reason


def test_registry_rejects_unknown_kind_and_bad_params():
    with pytest.raises(ValueError, match=r"unknown verifier 'maths'; choose one of \['code'"):
        VerifierSpec(kind="maths")
    with pytest.raises(ValueError, match="min_tokenz"):
        VerifierSpec(kind="length", min_tokenz=3)
    with build("length", {"min_tokens": 3}) as v:
        assert v({"completion_tokens": 2}).reason == "too_short"
