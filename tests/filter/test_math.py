"""Math verifier: answer extraction, equivalence across forms, look-alikes, and the outer timeout."""

import pytest

from distillkit.verify.verifiers.math import MathVerifier, extract_answer, extract_boxed


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(num_workers=2, timeout_s=20) as v:
        yield v


def rec(gold, response, closed=True):
    return {"gold_answer": gold, "response": response if closed else None, "reasoning_closed": closed,
            "completion": response, "prefill": ""}


@pytest.mark.parametrize("text, want", [
    (r"so \boxed{4}", "4"),
    (r"\boxed{3} then corrected: \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed{x^{2}+\sqrt{y_{1}}}", r"x^{2}+\sqrt{y_{1}}"),
    (r"\fbox{7}", "7"),
    (r"\boxed 5", "5"),
    (r"\boxed{12} and then an unclosed \boxed{3", "12"),  # an unclosed box is not an answer
    ("no box here", None),
    # an answer boxed in parts (R1 does this for several roots or pairs): joined when only separators lie between
    (r"The roots are $\boxed{3}$, $\boxed{5}$, and $\boxed{7}$.", "3, 5, 7"),
    (r"\boxed{-2} \quad \text{and} \quad \boxed{1}", "-2, 1"),
    (r"\(\boxed{1}\) or \(\boxed{2}\)", "1, 2"),  # a hedge reads as both answers: wrong for one gold
    (r"\boxed{13} and \boxed{13}", "13"),
    (r"First \boxed{14}. No, it is \boxed{13}.", "13"),  # words between: the last box is the answer
    (r"$x=\boxed{2}$, $y=\boxed{3}$", "3"),
    # an empty box counts only when it is the only kind there is
    (r"$\boxed{27}$ (written within \boxed{} as requested)", "27"),
    (r"So the answer is $\boxed{}$.", ""),
])
def test_extract_boxed(text, want):
    assert extract_boxed(text) == want


def test_fallbacks_are_opt_in():
    assert extract_answer("The answer is 42.") == (None, "")
    assert extract_answer("The answer is 42.", ["answer_is"]) == ("42", "answer_is")
    assert extract_answer("we get 1,200 apples", ["last_number"]) == ("1200", "last_number")


@pytest.mark.parametrize("gold, answer", [
    ("1/2", "0.5"),
    (r"\frac{1}{2}", r"\frac12"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\{1,2,3\}", r"\{3,2,1\}"),
    ("(0,1]", "(0, 1]"),
    ("x=3", "3"),
    ("5", r"5 \text{ apples}"),
    ("10\\%", "10"),
    ("1200", "1,200"),
])
def test_equivalent_forms_are_correct(verifier, gold, answer):
    v = verifier(rec(gold, rf"The result is \boxed{{{answer}}}."))
    assert (v.passed, v.reason) == (True, "correct")


@pytest.mark.parametrize("gold, answer", [
    ("1/2", "0.50001"),
    (r"2\sqrt{2}", r"\sqrt{6}"),
    ("(0,1]", "(0,1)"),
    ("5", "50"),
    (r"\{1,2,3\}", r"\{1,2\}"),
    ("-3", "3"),
])
def test_look_alikes_are_wrong(verifier, gold, answer):
    v = verifier(rec(gold, rf"\boxed{{{answer}}}"))
    assert (v.passed, v.reason) == (False, "wrong_answer")


def test_cannot_judge_or_nothing_to_judge(verifier):
    got = verifier.batch([rec(None, r"\boxed{4}"), rec("4", "four, I think"), rec("4", r"\boxed{}"),
                          rec("4", r"\boxed{4}", closed=False)])
    assert [(v.passed, v.reason) for v in got] == [
        (None, "no_gold_answer"), (False, "no_boxed_answer"), (False, "empty_boxed_answer"),
        (True, "correct")]  # unclosed reasoning is the truncation verifier's call, not this one's


def test_batch_keeps_order_and_dedupes_pairs(verifier):
    recs = [rec("4", r"\boxed{4}"), rec("4", r"\boxed{5}"), rec("4", r"\boxed{4}")] * 5
    assert [v.reason for v in verifier.batch(recs)] == ["correct", "wrong_answer", "correct"] * 5


def test_pathological_expression_times_out_and_pool_recovers():
    # sympy tries to evaluate 9^(9^(9^9)); math-verify's own timeout is off, the pool's kills it.
    with MathVerifier(num_workers=1, timeout_s=1.0) as v:
        got = v.batch([rec("12", r"\boxed{9^{9^{9^{9}}}}"), rec("12", r"\boxed{12}")])
        assert [(x.passed, x.reason) for x in got] == [(False, "verify_timeout"), (True, "correct")]
        assert v._pool.restarts == 1
