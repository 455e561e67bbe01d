"""The whole evaluate stage on distillkit's R1 tasks, offline: a scripted R1-Distill-Qwen teacher (real tokenizer
and template, known answer) and the real SmolLM2 student, on fixture MATH-500 rows, in one run that also holds
a task scored on the answer only (distillkit_arith). What it proves:

- the R1 task gets the raw response, `</think>` included (lm-eval's think_end_token would cut it off and the
  task would score every response "unclosed reasoning": pass@1 0 for a correct model);
- the task in the same run that reads answers only still gets the text after `</think>` from lm-eval;
- pass@1, its standard error and reasoning_closed come out of the stage as the task's verdicts say;
- the prompt the model sees is R1's user turn in the model's own chat template, then "<think>\\n".
"""

from __future__ import annotations

import json
from statistics import fmean

import pytest

from distillkit.config import validate_recipe
from distillkit.evaluate.harness import LOCAL_TASKS_DIR
from distillkit.testing import load_file_module

pytestmark = pytest.mark.slow

COMPLETION = "Two plus three makes five.\n</think>\n\nThe answer is $\\boxed{5}$."
R1_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
ROWS = [  # HuggingFaceH4/MATH-500's columns
    {"problem": "What is $2+3$?", "solution": "$2+3=\\boxed{5}$", "answer": "5", "subject": "Prealgebra",
     "level": 1, "unique_id": "test/prealgebra/fixture1.json"},
    {"problem": "What is $3+4$?", "solution": "$3+4=\\boxed{7}$", "answer": "7", "subject": "Prealgebra",
     "level": 1, "unique_id": "test/prealgebra/fixture2.json"},
]
K = 2


def _utils():
    return load_file_module(LOCAL_TASKS_DIR / "r1" / "utils.py", "r1_utils_stage")


@pytest.fixture(scope="module")
def r1_run(tmp_path_factory, smollm2_dir):
    from transformers import AutoTokenizer

    from distillkit.evaluate.stage import run_evaluate
    from distillkit.testing import real_tokenizers as rt
    from distillkit.testing.scripted import build_scripted_model, chain_for

    root = tmp_path_factory.mktemp("r1_stage")
    spec = rt.REAL_MODELS["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]
    tok_dir = spec["tokenizer"]()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    chain = chain_for(tokenizer, "<｜Assistant｜><think>\n", COMPLETION, tokenizer.eos_token_id)
    teacher = build_scripted_model(root / "teacher", tok_dir, chain, vocab_size=spec["config"]["vocab_size"],
                                   config_overrides={"max_position_embeddings": 4096, "tie_word_embeddings": False})
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tasks / "r1_math500.yaml").write_text(json.dumps({  # the shipped task, its data swapped for the fixture
        "include": str(LOCAL_TASKS_DIR / "r1" / "r1_math500.yaml"), "task": "r1_math500", "dataset_path": "json",
        "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(tasks / "math500.jsonl")}}}))
    cfg = validate_recipe({
        "name": "r1", "output_dir": str(root / "run"),
        "generate": {"teacher": {"model": str(teacher)}, "prompts": {"prefill": "<think>\n"}},
        "train": {"student": {"model": str(smollm2_dir)}},
        "evaluate": {"models": ["teacher", "student_before"], "tasks": ["r1_math500", "distillkit_arith"],
                     "include_path": str(tasks), "backend": "vllm", "num_samples": K, "max_gen_toks": 48,
                     "limit": 2},
    })
    return cfg, tokenizer, run_evaluate(cfg)


def _logged(cfg, model, task):
    path = cfg.stage_dir("evaluate") / "samples" / model / f"{task}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_r1_task_scores_the_raw_response_of_a_correct_r1_model(r1_run):
    cfg, _, _ = r1_run
    samples = _logged(cfg, "teacher", "r1_math500")
    assert len(samples) == 2
    for s in samples:
        assert s["resps"][0] == [COMPLETION] * K  # the raw text reached the task, </think> and all
    results = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())
    score = results["models"]["teacher"]["tasks"]["r1_math500"]
    # question 1 (gold 5) right in both samples, question 2 (gold 7) wrong: pass@1 0.5, se 0.5, pass@k 0.5
    assert (score["pass_at_1"], score["stderr"], score["pass_at_k"]) == (0.5, 0.5, 0.5)
    lm = results["models"]["teacher"]["lm_eval"]["results"]["r1_math500"]
    assert lm["reasoning_closed,none"] == 1.0


def test_the_answer_only_task_of_the_same_run_gets_the_text_after_think(r1_run):
    cfg, _, _ = r1_run
    for s in _logged(cfg, "teacher", "distillkit_arith"):
        assert s["filtered_resps"][0] == ["The answer is $\\boxed{5}$."] * K


def test_prompt_is_r1s_user_turn_in_the_models_template(r1_run):
    cfg, tokenizer, _ = r1_run
    [first, _] = _logged(cfg, "teacher", "r1_math500")
    prompt, gen_kwargs = first["arguments"][0]
    assert gen_kwargs["until"] == [] and (gen_kwargs["temperature"], gen_kwargs["top_p"]) == (0.6, 0.95)
    user = f"{ROWS[0]['problem']}\n{R1_INSTRUCTION}"
    expected = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True) + "<think>\n"
    assert prompt == expected
    assert prompt == f"<｜begin▁of▁sentence｜><｜User｜>{user}<｜Assistant｜><think>\n"


def test_real_smollm2_through_the_r1_task(r1_run):
    """The real small model writes its own text; its pass@1 and reasoning_closed are what the task's verdicts
    on the logged responses give (whatever they are: a 135M model rarely closes R1-style reasoning)."""
    cfg, _, _ = r1_run
    utils = _utils()
    samples = _logged(cfg, "student_before", "r1_math500")
    per_question, closed = [], []
    for s in samples:
        responses = s["resps"][0]
        assert len(responses) == K and all(isinstance(r, str) and r for r in responses)
        per_question.append(fmean(utils.judge_math(r, s["doc"]["answer"]).passed for r in responses))
        closed += ["</think>" in r for r in responses]
    results = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())["models"]["student_before"]
    assert results["tasks"]["r1_math500"]["pass_at_1"] == pytest.approx(fmean(per_question))
    assert results["lm_eval"]["results"]["r1_math500"]["reasoning_closed,none"] == pytest.approx(fmean(closed))


def test_comparison_names_each_tasks_version_prompt_and_extraction(r1_run):
    cfg, _, _ = r1_run
    text = (cfg.stage_dir("evaluate") / "comparison.md").read_text()
    [r1] = [line for line in text.splitlines() if line.startswith("- `r1_math500` v1.0")]
    assert "0-shot; prompt: zero-shot, R1 user turn" in r1 and "scored on the raw response (no </think>: wrong)" in r1
    [arith] = [line for line in text.splitlines() if line.startswith("- `distillkit_arith` v1.0 (distillkit)")]
    assert "scored on the text after </think> (lm-eval think_end_token" in arith
