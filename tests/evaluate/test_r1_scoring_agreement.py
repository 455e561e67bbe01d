"""bench/bench_r1_scoring.py: the verdicts BENCHMARKS.md documents, pinned on a handful of corpus responses.

Each row is one kind of response where distillkit's R1 math scoring and the peers' (lm-eval minerva_math
`math_verify` with and without `think_end_token`, lighteval 0.13.0 `pass_at_k_math` with and without its
reasoning-tag removal, open-r1's custom-task metrics) agree or part ways. If one of these changes (a math-verify or
lm-eval upgrade, a change to distillkit/evaluate/tasks/r1/utils.py), BENCHMARKS.md's "R1 task scoring: agreement
with lm-eval and lighteval" section needs rewriting along with this table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distillkit.testing import load_file_module

pytest.importorskip("math_verify")
pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_r1_scoring.py"


def _bench():
    return load_file_module(SCRIPT, "bench_r1_scoring")


bench = _bench()

# id: (R1-protocol verdict, distillkit, lm-eval </think>, lm-eval raw, lighteval, lighteval raw, open-r1)
EXPECTED = {
    # all agree
    "m000-clean": (1, 1, 1, 1, 1, 1, 1),
    "aI2-nolead": (1, 1, 1, 1, 1, 1, 1),  # boxed 25, AIME gold "025"
    "m000-draftok-finalwrong": (0, 0, 0, 0, 0, 0, 0),  # correct draft box inside <think>, wrong final box
    "m006-two-thinks": (1, 1, 1, 1, 1, 1, 1),
    # no </think>: lm-eval scores the whole text (also with think_end_token), lighteval strips only a tag pair
    "m002-unclosed": (0, 0, 1, 1, 1, 1, 1),
    # the only box is a draft inside <think>, the answer section states the answer unboxed
    "m010-draftok-finalunboxed": (0, 0, 1, 1, 1, 1, 1),
    "m003-unboxed-text": (0, 0, 1, 1, 1, 1, 1),  # unboxed final answer: credited by every peer
    "m009-noopen-draft": (0, 0, 1, 0, 0, 0, 0),  # pre-filled <think>, wrong draft box, unboxed final answer
    "m010-emptyanswer": (0, 0, 0, 1, 0, 1, 0),  # nothing after </think>: raw scorers read the reasoning
    "m012-emptybox": (0, 0, 0, 1, 0, 1, 0),  # \boxed{} after </think>
    # an answer given in parts: boxes separated only by commas/"and"/spaces are joined (extract_boxed);
    # a trailing empty box does not hide the answer before it
    "p-mv_all-183": (1, 1, 1, 1, 1, 1, 1),  # Math-Verify's R1 response: \boxed{-2} \quad \text{and} \quad \boxed{1}
    "m036-multibox-commas": (1, 1, 1, 1, 1, 1, 1),  # $\boxed{3}$, $\boxed{5}$, $\boxed{7}$
    "m006-trailing-emptybox": (1, 1, 1, 1, 1, 1, 1),  # \boxed{27} (written within \boxed{} as requested)
    "m036-multibox-oxford": (1, 1, 0, 0, 0, 0, 0),  # $\boxed{3}$, $\boxed{5}$, and $\boxed{7}$: peers miss it
    # distillkit wrong: words between the parts ("for part (a) and") keep the boxes apart, the last one counts
    "p-mv_ot-14": (1, 0, 1, 1, 1, 1, 1),
    # everyone wrong
    "m383-equiv1": (1, 0, 0, 0, 0, 0, 0),  # -2 \le x \le 7 for gold x \in [-2,7]
    "m002-decimal-approx": (0, 1, 1, 1, 1, 1, 1),  # 4.666666667 for 14/3 (math-verify rounds to 6 places)
    # distillkit right, peers wrong
    "m006-box-period": (1, 1, 0, 1, 0, 1, 0),  # \boxed{27.}; the raw scorers find 27 in the reasoning
    "m006-box-then-minerva": (1, 1, 0, 0, 0, 0, 0),  # \boxed{27}, then "Final Answer: The final answer is 26."
    # lighteval reads "the final answer is W" in reasoning it did not strip (no opening <think> tag)
    "m006-anchor-draft-noopen": (1, 1, 1, 1, 0, 0, 1),
    "m006-anchor-draft-open": (1, 1, 1, 1, 1, 0, 1),
}


@pytest.fixture(scope="module")
def corpus():
    return bench.load_corpus()


@pytest.fixture(scope="module")
def scorers():
    return bench.Scorers()


@pytest.fixture(scope="module")
def rows(corpus, scorers):
    golds, responses = corpus
    picked = [r for r in responses if r["id"] in EXPECTED]
    assert {r["id"] for r in picked} == set(EXPECTED)
    return {row["id"]: row for row in bench.score(golds, picked, scorers=scorers)}


def test_corpus_shape(corpus):
    golds, responses = corpus
    assert len(responses) >= 150
    assert len({r["id"] for r in responses}) == len(responses)
    for r in responses:
        assert r["gold"] in golds and isinstance(r["r1"], bool) and r["kind"] and r["why"]
    for g in golds.values():
        assert g["task"] in ("math500", "aime") and g["answer"] and g["solution"] and g["source"]
    kinds = {r["kind"] for r in responses}
    assert {"unclosed_reasoning", "draft_box_in_reasoning", "unboxed_final", "multi_box_answer",
            "no_open_think_tag", "aime_leading_zero", "equivalent_form", "wrong_answer"} <= kinds


@pytest.mark.parametrize("rid", sorted(EXPECTED))
def test_documented_verdicts(rows, rid):
    row = rows[rid]
    got = (int(row["r1"]),) + tuple(int(row["verdicts"][name]) for name in bench.SCORERS)
    assert got == EXPECTED[rid], dict(zip(("R1",) + bench.SCORERS, got))
    assert not any(k.endswith(" error") for k in row["verdicts"]), row["verdicts"]


def test_distillkit_column_is_judge_math(corpus, scorers):
    """The distillkit column is the r1 tasks' own judge_math, with its documented reasons."""
    golds, responses = corpus
    by_id = {r["id"]: r for r in responses}
    judge = scorers.r1.judge_math
    assert judge(by_id["m002-unclosed"]["response"], "\\frac{14}{3}").reason == "unclosed_reasoning"
    assert judge(by_id["m003-unboxed-text"]["response"], "9").reason == "no_boxed_answer"
    assert judge(by_id["m006-trailing-emptybox"]["response"], "27").reason == "correct"
    assert judge(by_id["p-mv_all-183"]["response"], "1,-2").reason == "correct"
    assert judge(by_id["m012-emptybox"]["response"], "284").reason == "empty_boxed_answer"


@pytest.mark.parametrize("rid", ["m000-clean", "m002-unclosed", "m010-draftok-finalunboxed", "m010-emptyanswer",
                                 "m006-box-period", "m009-noopen-draft", "p-mv_all-183"])
def test_lmeval_column_is_process_results(corpus, scorers, rid):
    """The bench's cached math_verify call gives lm-eval's own minerva_math process_results verdict."""
    golds, responses = corpus
    r = next(x for x in responses if x["id"] == rid)
    gold = golds[r["gold"]]
    for think_end in (True, False):
        full = scorers.lmeval_process_results(r["response"], gold, think_end)["math_verify"]
        assert bool(full) == scorers._lmeval(r["response"], gold, think_end)


def test_think_end_split_is_lmevals():
    """lm-eval keeps the text after the last </think>, and the whole text when there is none."""
    s = bench.Scorers.__new__(bench.Scorers)
    from lm_eval.models.utils import postprocess_generated_text

    s.postprocess = postprocess_generated_text
    assert s.lmeval_text("<think>a</think> b </think>  c", True) == "c"
    assert s.lmeval_text("<think>a \\boxed{1}", True) == "<think>a \\boxed{1}"
    assert s.lmeval_text("<think>a</think> b", False) == "<think>a</think> b"
    assert bench.remove_reasoning_tags("x<think>a</think>b<think>c</think>d") == "xbd"
    assert bench.remove_reasoning_tags("a</think>b") == "a</think>b"  # no opening tag: nothing removed


def test_main_prints_table_and_json(tmp_path, corpus):
    golds, responses = corpus
    picked = [r for r in responses if r["id"] in ("m000-clean", "m002-unclosed", "p-mv_all-183")]
    small = tmp_path / "corpus.json"
    small.write_text(json.dumps({"golds": {r["gold"]: golds[r["gold"]] for r in picked}, "responses": picked}))
    out = tmp_path / "out.json"
    assert bench.main(["--corpus", str(small), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["n"] == 3
    assert result["summary"]["correct"]["distillkit"] == 2  # clean, and the answer boxed in two parts
    assert result["summary"]["agree_with_r1"]["distillkit"] == 3
    assert {r["id"] for r in bench.disagreements(result["rows"])} == {"m002-unclosed"}
