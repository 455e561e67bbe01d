"""distillkit's R1-protocol lm-eval tasks (r1_aime24, r1_aime25, r1_math500, r1_gpqa_diamond), offline.

Fixture rows in each Hub dataset's own column layout are written here and loaded through the shipped task
definitions, with only the data source swapped by lm-eval's `include:` (the way a user points a task at
a local copy): the prompt, the verdicts on R1-style responses, the GPQA shuffle and the pass@1/pass@k the
evaluate stage computes are checked on what lm-eval really renders and scores.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter
from pathlib import Path
from statistics import fmean, stdev

import pytest

from distillkit.evaluate.harness import LOCAL_TASKS_DIR
from distillkit.testing import load_file_module

R1_DIR = LOCAL_TASKS_DIR / "r1"
LM_EVAL_YAMLS = {"minerva_math500": "minerva_math/minerva_math500.yaml", "aime24": "aime/aime24.yaml"}
R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."  # DeepSeek-R1 README
K = 3  # samples per question in the lm-eval run


def _load_utils():
    return load_file_module(R1_DIR / "utils.py", "r1_task_utils")


utils = _load_utils()
LM_EVAL_TASKS = Path(importlib.util.find_spec("lm_eval.tasks").origin).parent

# ------------------------------------------------------------------------ fixture rows, Hub layouts

# HuggingFaceH4/aime_2024 (split train) and yentinglin/aime_2025 (split train): id, problem, solution,
# answer (a string; AIME answers may carry leading zeros), url, year.
AIME24_ROWS = [
    {"id": 60, "problem": "Find the number of ordered pairs $(a,b)$ of positive integers with $a+b=14$.",
     "solution": "$a$ runs from $1$ to $13$, so there are $\\boxed{13}$ pairs.", "answer": "13",
     "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1", "year": "2024"},
    {"id": 61, "problem": "Find the remainder when $2^{5}+1$ is divided by $1000$.",
     "solution": "$2^5+1=33$, so the remainder is $\\boxed{033}$.", "answer": "033",
     "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_2", "year": "2024"},
    {"id": 62, "problem": "Find $12 \\cdot 17$.", "solution": "$12 \\cdot 17 = \\boxed{204}$.", "answer": "204",
     "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_3", "year": "2024"},
]
AIME25_ROWS = [
    {"id": 0, "problem": "Find the sum of all positive divisors of $10$.",
     "solution": "$1+2+5+10=\\boxed{18}$.", "answer": "18",
     "url": "https://artofproblemsolving.com/wiki/index.php/2025_AIME_I_Problems/Problem_1", "year": "2025"},
    {"id": 1, "problem": "Find $7^2+1$.", "solution": "$\\boxed{50}$", "answer": "50",
     "url": "https://artofproblemsolving.com/wiki/index.php/2025_AIME_I_Problems/Problem_2", "year": "2025"},
]
# HuggingFaceH4/MATH-500 (split test, test.jsonl): problem, solution, answer, subject, level, unique_id.
MATH500_ROWS = [
    {"problem": "Simplify $\\frac{6}{12}$.", "solution": "$\\frac{6}{12} = \\boxed{\\frac{1}{2}}$.",
     "answer": "\\frac{1}{2}", "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/9001.json"},
    {"problem": "Convert the point $(0,2)$ in rectangular coordinates to polar coordinates.  Enter your answer in "
                "the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
     "solution": "We have $r = 2$ and $\\theta = \\frac{\\pi}{2}$, so $\\boxed{\\left( 2, \\frac{\\pi}{2} \\right)}$.",
     "answer": "\\left( 2, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/9002.json"},
]
# Idavidrein/gpqa, config gpqa_diamond (split train): gpqa_diamond.csv, these 78 columns in this order.
GPQA_COLUMNS = [
    "Pre-Revision Question", "Pre-Revision Correct Answer", "Pre-Revision Incorrect Answer 1",
    "Pre-Revision Incorrect Answer 2", "Pre-Revision Incorrect Answer 3", "Pre-Revision Explanation",
    "Self-reported question-writing time (minutes)", "Question", "Correct Answer", "Incorrect Answer 1",
    "Incorrect Answer 2", "Incorrect Answer 3", "Explanation", "Revision Comments (from Question Writer)",
    "Subdomain", "Writer's Difficulty Estimate", "Extra Revised Question", "Extra Revised Explanation",
    "Extra Revised Correct Answer", "Extra Revised Incorrect Answer 1", "Extra Revised Incorrect Answer 2",
    "Extra Revised Incorrect Answer 3", "Non-Expert Validator Accuracy", "Majority Non-Expert Vals Incorrect",
    "Expert Validator Accuracy", "Record ID", "High-level domain", "Question Writer",
    *[f"{c}_EV_{i}" for i in (1, 2) for c in (
        "Feedback", "Validator Revision Suggestion", "Is First Validation", "Post hoc agreement",
        "Sufficient Expertise?", "Understand the question?", "Question Difficulty", "Validator Answered Correctly",
        "Self-reported time (minutes)", "Probability Correct", "Manual Correctness Adjustment", "Expert Validator")],
    *[f"{c}_NEV_{i}" for i in (1, 2, 3) for c in (
        "Feedback", "Validator Answered Correctly", "Explanation", "Self-reported time (minutes)",
        "Websites visited", "Probability Correct", "Manual Correctness Adjustment", "Non-Expert Validator")],
    "Expert Validator Disagreement Category", "Canary String",
]


def _gpqa_row(record_id, question, correct, incorrect, domain):
    row = {c: "" for c in GPQA_COLUMNS}
    row.update({"Question": question, "Correct Answer": correct, "Incorrect Answer 1": incorrect[0],
                "Incorrect Answer 2": incorrect[1], "Incorrect Answer 3": incorrect[2], "Record ID": record_id,
                "High-level domain": domain, "Subdomain": f"{domain} (general)",
                "Pre-Revision Question": question, "Pre-Revision Correct Answer": correct,
                "Self-reported question-writing time (minutes)": "30.0", "Expert Validator Accuracy": "1.0",
                "Non-Expert Validator Accuracy": "0.0", "Majority Non-Expert Vals Incorrect": "1.0"})
    return row


GPQA_ROWS = [
    # trailing whitespace and newlines in options occur in the real file: the prompt strips them
    _gpqa_row("recFixtureQ0000001", "Two quantum states with lifetimes of 10^-9 s and 10^-8 s are to be resolved. "
              "Which energy difference allows this?", "10^-4 eV", ["10^-11 eV", "10^-8 eV\n", "10^-9 eV "], "Physics"),
    _gpqa_row("recFixtureQ0000002", "Which organelle carries out oxidative phosphorylation in eukaryotic cells?",
              "mitochondrion", ["ribosome", "Golgi apparatus", "lysosome"], "Biology"),
]


def _math_prompt(problem):
    return f"{problem}\n{R1_INSTRUCTION}"


def _gpqa_expected_prompt(row, options):
    lines = "\n".join(f"{letter}) {option}" for letter, option in zip("ABCD", options))
    return (f"{row['Question']}\n\n{lines}\n{R1_INSTRUCTION} "
            "Only include the letter choice (A, B, C, or D) as your final answer.")


# Pinned order of the fixture questions' options: a change of the shuffle changes every GPQA score.
GPQA_EXPECTED = {
    "recFixtureQ0000001": (["10^-8 eV", "10^-4 eV", "10^-11 eV", "10^-9 eV"], "B"),
    "recFixtureQ0000002": (["Golgi apparatus", "lysosome", "mitochondrion", "ribosome"], "C"),
}


@pytest.fixture(scope="module")
def fixture_tasks(tmp_path_factory) -> Path:
    """A folder of task YAMLs that `include:` the shipped ones and read the fixture files instead of the Hub."""
    import datasets

    folder = tmp_path_factory.mktemp("r1_fixture_tasks")
    datasets.Dataset.from_list(AIME24_ROWS).to_parquet(folder / "aime24.parquet")
    datasets.Dataset.from_list(AIME25_ROWS).to_parquet(folder / "aime25.parquet")
    (folder / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MATH500_ROWS))
    with open(folder / "gpqa_diamond.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=GPQA_COLUMNS)
        writer.writeheader()
        writer.writerows(GPQA_ROWS)
    sources = {"r1_aime24": ("parquet", "aime24.parquet", "train"), "r1_aime25": ("parquet", "aime25.parquet", "train"),
               "r1_math500": ("json", "math500.jsonl", "test"), "r1_gpqa_diamond": ("csv", "gpqa_diamond.csv", "train")}
    # lm-eval's own tasks on the same fixtures (aime24 reads Maxwell-Jia/AIME_2024: ID, Problem, Solution, Answer)
    datasets.Dataset.from_list([{"ID": f"2024-I-{r['id']}", "Problem": r["problem"], "Solution": r["solution"],
                                 "Answer": int(r["answer"])} for r in AIME24_ROWS]).to_parquet(folder / "aime24_mj.parquet")
    sources["minerva_math500"] = ("json", "math500.jsonl", "test")
    sources["aime24"] = ("parquet", "aime24_mj.parquet", "train")
    for task, (builder, data, split) in sources.items():
        shipped = R1_DIR / f"{task}.yaml" if task.startswith("r1_") else LM_EVAL_TASKS / LM_EVAL_YAMLS[task]
        override = {"include": str(shipped), "task": task, "dataset_path": builder,
                    "dataset_name": None,
                    "dataset_kwargs": {"data_files": {split: str(folder / data)}, "cache_dir": str(folder / "cache")}}
        (folder / "yamls").mkdir(exist_ok=True)
        (folder / "yamls" / f"{task}.yaml").write_text(json.dumps(override))  # JSON is YAML
    return folder


@pytest.fixture(scope="module")
def task_manager(fixture_tasks):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(fixture_tasks / "yamls"), include_defaults=False)


@pytest.fixture(scope="module")
def tasks(task_manager):
    return task_manager.load(["r1_aime24", "r1_aime25", "r1_math500", "r1_gpqa_diamond"])["tasks"]


def _docs(task):
    return list(task.eval_docs)


# ------------------------------------------------------------------------------------- registration


def _yaml(path):
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix} {node.value}")
    return yaml.load(path.read_text(), Loader=Loader)


def test_tasks_ship_with_distillkit_on_the_peers_datasets():
    from distillkit.evaluate.harness import local_task_names, make_task_manager

    names = {"r1_aime24", "r1_aime25", "r1_math500", "r1_gpqa_diamond"}
    assert names <= local_task_names([LOCAL_TASKS_DIR])
    tm = make_task_manager(sorted(names))  # distillkit's own folder only: lm-eval's built-ins are not indexed
    assert names <= set(tm.all_tasks) and "aime24" not in tm.all_tasks
    sources = {n: (c["dataset_path"], c["dataset_name"], c["test_split"])
               for n in names for c in [_yaml(R1_DIR / f"{n}.yaml")]}
    assert sources == {"r1_aime24": ("HuggingFaceH4/aime_2024", "default", "train"),
                       "r1_aime25": ("yentinglin/aime_2025", "default", "train"),
                       "r1_math500": ("HuggingFaceH4/MATH-500", "default", "test"),
                       "r1_gpqa_diamond": ("Idavidrein/gpqa", "gpqa_diamond", "train")}
    for n in names:
        cfg = _yaml(R1_DIR / f"{n}.yaml")
        assert cfg["num_fewshot"] == 0 and cfg["repeats"] == 1
        assert cfg["metric_list"][0]["metric"] == "pass@1"  # the evaluate stage reports the first metric
        assert cfg["generation_kwargs"]["until"] == []  # no "\n\n" default cutting the reasoning


# ------------------------------------------------------------------------------------------ prompts


def test_math_prompts_are_r1s_zero_shot_instruction(tasks):
    for name, rows in [("r1_aime24", AIME24_ROWS), ("r1_aime25", AIME25_ROWS), ("r1_math500", MATH500_ROWS)]:
        task = tasks[name]
        docs = _docs(task)
        assert [d["problem"] for d in docs] == [r["problem"] for r in rows]  # the fixture, not the Hub
        for doc, row in zip(docs, rows):
            assert task.doc_to_text(doc) == _math_prompt(row["problem"])
            assert str(task.doc_to_target(doc)) == row["answer"]
    assert tasks["r1_aime24"].doc_to_text(_docs(tasks["r1_aime24"])[0]) == (
        "Find the number of ordered pairs $(a,b)$ of positive integers with $a+b=14$.\n"
        "Please reason step by step, and put your final answer within \\boxed{}.")


def test_gpqa_prompt_shuffle_is_fixed_per_question_and_maps_the_letter(tasks):
    task = tasks["r1_gpqa_diamond"]
    docs = _docs(task)
    for doc, row in zip(docs, GPQA_ROWS):
        options, letter = GPQA_EXPECTED[row["Record ID"]]
        assert (doc["options"], doc["gold_letter"]) == (options, letter)
        assert options["ABCD".index(letter)] == row["Correct Answer"].strip()
        assert sorted(options) == sorted(row[c].strip() for c in ("Correct Answer", "Incorrect Answer 1",
                                                                  "Incorrect Answer 2", "Incorrect Answer 3"))
        assert task.doc_to_text(doc) == _gpqa_expected_prompt(row, options)
        assert task.doc_to_target(doc) == letter
        # the order depends on the question alone: not on row order, other rows, or a global seed
        assert utils.gpqa_options(dict(reversed(list(row.items())))) == (options, letter)
    assert task.doc_to_text(docs[1]) == (
        "Which organelle carries out oxidative phosphorylation in eukaryotic cells?\n\n"
        "A) Golgi apparatus\nB) lysosome\nC) mitochondrion\nD) ribosome\n"
        "Please reason step by step, and put your final answer within \\boxed{}. "
        "Only include the letter choice (A, B, C, or D) as your final answer.")


def test_gpqa_correct_letter_is_uniform_over_questions():
    row = dict(GPQA_ROWS[0])
    letters = Counter(utils.gpqa_options(row | {"Record ID": f"rec{i:05d}"})[1] for i in range(800))
    assert set(letters) == set("ABCD") and all(150 < n < 250 for n in letters.values()), letters


# ------------------------------------------------------------------------------------------ verdicts

THINK = "Let me work through this step by step.\n"
MATH_CASES = [
    # (response as generated after the "<think>\n" prefill, gold, verdict reason, passed)
    (THINK + "a runs from 1 to 13.\n</think>\n\nThe answer is $\\boxed{13}$.", "13", "correct", True),
    (THINK + "Maybe it is \\boxed{13}? No, a can be 0.\n</think>\n\nThe answer is $\\boxed{14}$.", "13",
     "wrong_answer", False),  # a correct-looking draft inside <think> does not count
    (THINK + "First guess \\boxed{14}.\n</think>\n\nThe answer is $\\boxed{13}$.", "13", "correct", True),
    (THINK + "So the answer is \\boxed{13}. Let me double-check that once more, carefully, by", "13",
     "unclosed_reasoning", False),  # cut at the token limit inside the reasoning
    (THINK + "</think>\n\nSo there are $\\boxed{12}$ pairs.", "13", "wrong_answer", False),
    (THINK + "</think>\n\nThe answer is 13.", "13", "no_boxed_answer", False),  # unboxed: the filter's default
    (THINK + "</think>\n\nThe answer is $\\boxed{1", "13", "no_boxed_answer", False),  # cut inside the box
    (THINK + "</think>\n\n$\\boxed{}$", "13", "empty_boxed_answer", False),
    (THINK + "</think>\n\n$\\boxed{33}$", "033", "correct", True),  # AIME's zero-padded gold
    (THINK + "</think>\n\n$\\boxed{0.5}$", "\\frac{1}{2}", "correct", True),
    (THINK + "</think>\n\n$\\boxed{(2, \\frac{\\pi}{2})}$", "\\left( 2, \\frac{\\pi}{2} \\right)", "correct", True),
    (THINK + "</think>\n\n$\\boxed{(2, \\pi)}$", "\\left( 2, \\frac{\\pi}{2} \\right)", "wrong_answer", False),
]


@pytest.mark.parametrize("response, gold, reason, passed", MATH_CASES)
def test_math_verdicts_on_r1_style_responses(tasks, response, gold, reason, passed):
    verdict = utils.judge_math(response, gold)
    assert (verdict.passed, verdict.reason) == (passed, reason)
    scores = tasks["r1_aime24"].process_results({"answer": gold}, [response])  # the task's own hook
    assert scores["pass@1"] == float(passed)
    assert scores["reasoning_closed"] == float("</think>" in response)


def test_math_verdicts_equal_the_filters_on_closed_reasoning():
    """One implementation: on the answer section the generate stage stores, the filter's math verifier
    (worker pool) reaches the same verdict. Unclosed reasoning is where they differ on purpose: the filter
    leaves it to its truncation verifier, evaluation counts it wrong."""
    from distillkit.records import split_reasoning
    from distillkit.verify.verifiers.math import MathVerifier

    closed = [(r, g) for r, g, _, _ in MATH_CASES if "</think>" in r]
    records = []
    for response, gold in closed:
        _reasoning, section, is_closed = split_reasoning(response, "<think>\n")
        records.append({"gold_answer": gold, "response": section, "reasoning_closed": is_closed,
                        "completion": response, "prefill": "<think>\n"})
    with MathVerifier(num_workers=1, timeout_s=30) as verifier:
        filter_verdicts = verifier.batch(records)
    eval_verdicts = [utils.judge_math(r, g) for r, g in closed]
    assert [(v.passed, v.reason) for v in eval_verdicts] == [(v.passed, v.reason) for v in filter_verdicts]


GPQA_CASES = [
    # (answer after "</think>\n\n", verdict reason, passed); gold letter "C" (mitochondrion in GPQA_ROWS[1])
    ("The answer is $\\boxed{C}$.", "correct", True),
    ("$\\boxed{(C)}$", "correct", True),
    ("$\\boxed{\\text{C}}$", "correct", True),
    ("$\\boxed{C) mitochondrion}$", "correct", True),
    # lm-eval's flexible filter takes the last "(X)" of the text: here an option being ruled out
    ("Option (A) is wrong and (B) is a lysosome, so $\\boxed{C}$. Not (D).", "correct", True),
    ("$\\boxed{B}$", "wrong_answer", False),
    ("$\\boxed{mitochondrion}$", "not_a_choice", False),
    ("$\\boxed{C and D}$", "not_a_choice", False),
    ("The answer is (C).", "no_boxed_answer", False),
]


@pytest.mark.parametrize("answer, reason, passed", GPQA_CASES)
def test_gpqa_verdicts_read_the_boxed_letter_after_think(tasks, answer, reason, passed):
    response = THINK + "It should be \\boxed{A}, no.\n</think>\n\n" + answer  # a draft box inside <think>
    verdict = utils.judge_choice(response, "C")
    assert (verdict.passed, verdict.reason) == (passed, reason)
    task = tasks["r1_gpqa_diamond"]
    doc = _docs(task)[1]
    assert doc["gold_letter"] == "C"
    assert task.process_results(doc, [response])["pass@1"] == float(passed)


def test_gpqa_unclosed_reasoning_is_wrong_even_with_the_right_box():
    verdict = utils.judge_choice(THINK + "So it is \\boxed{C}. Let me also check the", "C")
    assert (verdict.passed, verdict.reason) == (False, "unclosed_reasoning")


# ------------------------------------------------------------------- a whole lm-eval run, k samples


def _closed(answer):
    return f"{THINK}Working.\n</think>\n\n{answer}"


def _unclosed(draft):
    """A response cut at the token limit inside the reasoning, after a draft of the (right) answer."""
    return f"{THINK}So it is {draft}. Let me verify this once more, since the token limit is near and"


# (task, question index) -> the K responses the scripted model gives, and the question's expected pass rate
SCRIPT = {
    ("r1_aime24", 0): ([_closed("$\\boxed{13}$"), THINK + "\\boxed{13}?\n</think>\n\n$\\boxed{12}$",
                        _unclosed("\\boxed{13}")], 1 / 3),
    ("r1_aime24", 1): ([_closed("$\\boxed{33}$"), _closed("$\\boxed{033}$"), _closed("So $\\boxed{33}$.")], 1.0),
    ("r1_aime24", 2): ([_closed("The answer is 204."), _unclosed("\\boxed{204}"), _closed("$\\boxed{203}$")], 0.0),
    ("r1_aime25", 0): ([_closed("$\\boxed{18}$"), _closed("$\\boxed{18}$"), _closed("$\\boxed{17}$")], 2 / 3),
    ("r1_aime25", 1): ([_unclosed("\\boxed{50}"), _unclosed("50"), _closed("$\\boxed{49}$")], 0.0),
    ("r1_math500", 0): ([_closed("$\\boxed{0.5}$"), _closed("$\\boxed{\\frac12}$"), _closed("$\\boxed{1/2}$")], 1.0),
    ("r1_math500", 1): ([_closed("$\\boxed{(2, \\frac{\\pi}{2})}$"), _closed("$\\boxed{(2, \\pi)}$"),
                         _unclosed("\\boxed{(2, \\frac{\\pi}{2})}")], 1 / 3),
    ("r1_gpqa_diamond", 0): ([_closed("$\\boxed{B}$"), _closed("$\\boxed{(B)}$"), _closed("$\\boxed{A}$")], 2 / 3),
    ("r1_gpqa_diamond", 1): ([_closed("Not (A), so $\\boxed{C}$"), _closed("$\\boxed{mitochondrion}$"),
                              _unclosed("\\boxed{C}")], 1 / 3),
}


def _expected_user_turns():
    turns = {}
    for name, rows in [("r1_aime24", AIME24_ROWS), ("r1_aime25", AIME25_ROWS), ("r1_math500", MATH500_ROWS)]:
        turns.update({_math_prompt(r["problem"]): (name, i) for i, r in enumerate(rows)})
    for i, row in enumerate(GPQA_ROWS):
        turns[_gpqa_expected_prompt(row, GPQA_EXPECTED[row["Record ID"]][0])] = ("r1_gpqa_diamond", i)
    return turns


@pytest.fixture(scope="module")
def scripted_run(tasks, task_manager):
    """The four tasks through lm-eval as the evaluate stage runs them (k samples via `sample_each`, chat
    template, "<think>\\n" prefill, R1 sampling settings), answered by a model that replays SCRIPT."""
    import lm_eval
    from lm_eval.api.model import LM

    from distillkit.evaluate.protocol import r1_gen_kwargs, sample_each

    turns = _expected_user_turns()
    chats, gen_kwargs, served = [], [], Counter()

    class ScriptedLM(LM):
        tokenizer_name = "scripted"

        def apply_chat_template(self, chat_history, add_generation_prompt=True):
            return json.dumps(chat_history)

        def generate_until(self, requests):
            out = []
            for req in requests:
                context, kwargs = req.args
                chat = json.loads(context)
                chats.append(chat)
                gen_kwargs.append(kwargs)
                key = turns[chat[0]["content"]]  # KeyError: a prompt that is not R1's
                out.append(SCRIPT[key][0][served[key]])
                served[key] += 1
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    for task in tasks.values():
        task.set_config("gen_prefix", "<think>\n")
        assert sample_each(task, K)
    results = lm_eval.simple_evaluate(
        model=ScriptedLM(), tasks=list(tasks.values()), task_manager=task_manager, apply_chat_template=True,
        gen_kwargs=r1_gen_kwargs(0.6, 0.95, 32768), log_samples=True, bootstrap_iters=0)
    return results, chats, gen_kwargs, served


def test_lm_eval_renders_r1s_chat(scripted_run):
    _results, chats, gen_kwargs, served = scripted_run
    assert sorted(served.values()) == [K] * len(SCRIPT)  # K samples of every question, each script used once
    turns = _expected_user_turns()
    for chat in chats:  # no system turn, the R1 user turn verbatim, the answer started inside <think>
        assert [m["role"] for m in chat] == ["user", "assistant"]
        assert chat[0]["content"] in turns and chat[1]["content"] == "<think>\n"
    for kwargs in gen_kwargs:
        assert (kwargs["temperature"], kwargs["top_p"], kwargs["max_gen_toks"], kwargs["do_sample"]) == (0.6, 0.95,
                                                                                                        32768, True)
        assert "\n\n" not in kwargs.get("until", [])


@pytest.mark.parametrize("name", ["r1_aime24", "r1_aime25", "r1_math500", "r1_gpqa_diamond"])
def test_pass_at_1_and_pass_at_k_over_k_samples(scripted_run, tasks, name):
    from distillkit.evaluate.protocol import primary_metric, summarize_samples

    results, *_ = scripted_run
    expected = [rate for (task, _i), (_responses, rate) in sorted(SCRIPT.items()) if task == name]
    score = summarize_samples(name, results["samples"][name], primary_metric(tasks[name]))
    assert (score.metric, score.num_questions, score.num_samples) == ("pass@1", len(expected), K)
    assert score.pass_at_1 == pytest.approx(fmean(expected))
    assert score.stderr == pytest.approx(stdev(expected) / len(expected) ** 0.5)
    assert score.pass_at_k == pytest.approx(fmean(r > 0 for r in expected))
    assert sorted(score.per_question.values()) == pytest.approx(sorted(expected))
    assert results["results"][name][f"pass@1,{score.filter}"] == pytest.approx(fmean(expected))
    closed = [fmean("</think>" in r for r in responses) for (t, _i), (responses, _r) in sorted(SCRIPT.items())
              if t == name]
    assert results["results"][name][f"reasoning_closed,{score.filter}"] == pytest.approx(fmean(closed))


# --------------------------------------------------------- how the harness hands tasks their responses


@pytest.fixture(scope="module")
def builtin_tasks(task_manager):
    """lm-eval's own minerva_math500 and aime24, on the same fixture questions."""
    return task_manager.load(["minerva_math500", "aime24"])["tasks"]


def test_r1_tasks_get_raw_responses_and_lm_evals_get_the_answer_only(tasks, builtin_tasks):
    from distillkit.evaluate.harness import task_groups

    groups = task_groups({**builtin_tasks, **tasks}, "</think>")
    assert [(token, sorted(group)) for token, group in groups] == [
        ("</think>", ["aime24", "minerva_math500"]),
        (None, ["r1_aime24", "r1_aime25", "r1_gpqa_diamond", "r1_math500"])]
    assert task_groups(tasks, "</think>") == [(None, tasks)]  # one lm-eval call when all are R1 tasks
    # a user who sets think_end_token=None in evaluate.model_args gets lm-eval's tasks unstripped too
    assert [t for t, _ in task_groups({**builtin_tasks, **tasks}, None)] == [None, None]


def test_tasks_that_cannot_read_a_boxed_answer_are_named(task_manager, builtin_tasks, caplog):
    """The probe scores "<think>..</think> The final answer is $\\boxed{gold}$." with each task's own code."""
    from distillkit.evaluate.harness import R1_TASKS, warn_unboxed
    from distillkit.evaluate.protocol import reads_boxed_answers

    tasks = task_manager.load(list(R1_TASKS))["tasks"]  # as loaded, before the evaluate stage wraps them

    # minerva_math500 reports exact_match, which wants "Final Answer: The final answer is X. I hope it is
    # correct."; aime24 reads the last \boxed{}; the R1 tasks read the box after </think>
    assert reads_boxed_answers(builtin_tasks["minerva_math500"], strip_reasoning=True) is False
    assert reads_boxed_answers(builtin_tasks["aime24"], strip_reasoning=True) is True
    for name, task in tasks.items():
        assert reads_boxed_answers(task, strip_reasoning=False) is True, name
    with caplog.at_level("WARNING"):
        assert warn_unboxed({**builtin_tasks, **tasks}, "</think>") == ["minerva_math500"]
        # the stage evaluates up to three models with the same tasks: one warning, not three
        assert warn_unboxed({**builtin_tasks, **tasks}, "</think>") == ["minerva_math500"]
    assert "minerva_math500 scores an R1-style answer" in caplog.text and "'exact_match'" in caplog.text
    assert caplog.text.count("scores an R1-style answer") == 1


def test_task_description_names_version_data_prompt_and_extraction(task_manager, builtin_tasks):
    from distillkit.evaluate.harness import describe_task
    from distillkit.evaluate.stage import task_lines

    r1 = task_manager.load(["r1_gpqa_diamond"])["tasks"]["r1_gpqa_diamond"]
    info = describe_task(r1, "</think>")
    assert (info.version, info.num_fewshot, info.metric) == (1.0, 0, "pass@1")
    assert "shuffled by a hash of Record ID" in info.prompt and "last \\boxed{}" in info.extraction
    assert info.scored_text == "the raw response (no </think>: wrong)"
    builtin = describe_task(builtin_tasks["minerva_math500"], "</think>")
    assert builtin.extraction.startswith("lm-eval's own: metric exact_match")
    assert builtin.scored_text.startswith("the text after </think>") and builtin.source == str(
        task_manager.task_index["minerva_math500"].yaml_path)  # the fixture override here; lm-eval's path for users
    [_, _, line] = task_lines({"r1_gpqa_diamond": info})
    assert line.startswith("- `r1_gpqa_diamond` v1.0 (")
    assert "split train; 0-shot; prompt: zero-shot, R1 user turn" in line
