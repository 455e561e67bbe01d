"""`distillkit compare`: arms x seeds as normal run folders, shared teacher generation and reference scores,
intervals from distillkit.evaluate.seeds, resume, and clear errors for arms that cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path
from collections import Counter

import pytest

from distillkit.compare import arm_configs, comparison_markdown, run_compare
from distillkit.config import validate_recipe
from distillkit.errors import ConfigError, DistillkitError


def recipe(tmp_path, teacher, student, **compare):
    return validate_recipe({
        "name": "cmp", "output_dir": str(tmp_path / "run"), "stages": ["generate", "train", "evaluate"],
        "generate": {"teacher": {"model": str(teacher), "backend": "transformers", "vllm": {"dtype": "float32"}},
                     "prompts": {"builtin": "arith", "builtin_args": {"num": 4}},
                     "sampling": {"n": 2, "max_tokens": 12, "topk_logprobs": 4, "seed": 3}, "shard_size": 4},
        "train": {"student": {"model": str(student)}, "method": "full", "num_train_epochs": 1,
                  "per_device_train_batch_size": 4, "max_length": 128, "bf16": False, "save_steps": 1000,
                  "gradient_checkpointing": False, "packing": False},
        "evaluate": {"models": ["teacher", "student_before", "student_after"], "tasks": ["distillkit_arith"],
                     "backend": "hf", "num_samples": 2, "max_gen_toks": 8, "limit": 3},
        "compare": compare,
    })


def test_arms_are_validated_together_with_the_key_and_the_fix(tmp_path, tiny_qwen2, tiny_llama):
    with pytest.raises(ConfigError) as e:
        arm_configs(recipe(tmp_path, tiny_qwen2, tiny_llama, train_only=True,
                           arms={"a": {"generate.sampling.n": 4}, "b": {"train.lora.rr": 8}, "c": {"train.seed": 1}}))
    text = str(e.value)
    assert "compare.arms.a: overrides ['generate.sampling.n'], but compare.train_only is set" in text
    assert "compare.arms.b" in text and "rr" in text
    assert "compare.arms.c: output_dir, train.seed and compare are set by compare itself" in text
    with pytest.raises(ConfigError, match="no arms"):
        arm_configs(recipe(tmp_path, tiny_qwen2, tiny_llama))
    with pytest.raises(Exception, match="baseline: 'x' is not one of the arms"):
        recipe(tmp_path, tiny_qwen2, tiny_llama, arms={"a": {}}, baseline="x")
    runs = arm_configs(recipe(tmp_path, tiny_qwen2, tiny_llama, seeds=2,
                              arms={"sft": {}, "kd": {"train.kd.enabled": True, "train.kd.divergence": "jsd"}}))
    assert [r.train.seed for r in runs["kd"]] == [0, 1] and runs["kd"][1].train.kd.divergence == "jsd"
    assert not runs["sft"][0].train.kd.enabled and runs["sft"][0].seed == runs["kd"][1].seed  # data seed kept
    assert runs["kd"][1].run_dir == tmp_path / "run" / "compare" / "runs" / "kd" / "seed-1"


def test_an_arm_can_start_from_another_arms_student_of_the_same_seed(tmp_path, tiny_qwen2, tiny_llama, monkeypatch):
    """SFT, then on-policy: `after: sft` trains each seed from sft's student of that seed, so sft runs first."""
    cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, seeds=2,
                 arms={"onpolicy": {"after": "sft", "train.learning_rate": 1e-5}, "sft": {}})
    assert cfg.compare.arm_order() == ["sft", "onpolicy"]
    runs = arm_configs(cfg)
    assert list(runs) == ["sft", "onpolicy"]
    for seed, run in enumerate(runs["onpolicy"]):
        assert run.train.student.model == str(runs["sft"][seed].stage_dir("train") / "model")
        assert run.train.student.keep_layers is None and run.train.learning_rate == 1e-5
    with pytest.raises(Exception, match=r"circle \(a -> b -> a\)"):
        recipe(tmp_path, tiny_qwen2, tiny_llama, arms={"a": {"after": "b"}, "b": {"after": "a"}})
    with pytest.raises(Exception, match="arms.a.after: 'zz' is not one of the arms"):
        recipe(tmp_path, tiny_qwen2, tiny_llama, arms={"a": {"after": "zz"}})
    with pytest.raises(ConfigError, match="sets both `after` and train.student.model"):
        arm_configs(recipe(tmp_path, tiny_qwen2, tiny_llama,
                           arms={"a": {}, "b": {"after": "a", "train.student.model": str(tiny_llama)}}))
    # the dependent arm does not start before its source seed has trained (here nothing trains at all)
    import distillkit.pipeline

    monkeypatch.setattr(distillkit.pipeline, "run_pipeline", lambda run, *a, **k: None)
    with pytest.raises(DistillkitError, match="starts from arm sft's student of seed 0, which has not finished"):
        run_compare(cfg)



ON_POLICY = {"train.on_policy.enabled": True, "train.kd.enabled": True, "train.kd.teacher_probs": "served",
             "train.kd.teacher_server.openai.serve": True, "train.kd.divergence": "reverse_kl"}


def test_on_policy_after_sft_at_the_sft_learning_rate_is_warned(tmp_path, tiny_qwen2, tiny_llama):
    from distillkit.compare import step_size_warnings

    def warnings(**onpolicy):
        cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, seeds=2,
                     arms={"sft": {"train.learning_rate": 1e-4}, "onpolicy": {"after": "sft", **ON_POLICY, **onpolicy},
                           "kd": {"train.kd.enabled": True}})
        return step_size_warnings(cfg, arm_configs(cfg))

    (w,) = warnings(**{"train.learning_rate": 1e-4})
    assert w.startswith("compare.arms.onpolicy: on-policy distillation continues sft's students at learning rate 0.0001")
    assert "add train.learning_rate=1e-05 to the arm" in w
    assert warnings(**{"train.learning_rate": 1e-5}) == []
    assert len(warnings(**{"train.learning_rate": 5e-5})) == 1
    # off-policy arms and on-policy arms that start from scratch are not warned
    cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, arms={"sft": {}, "op": ON_POLICY})
    assert step_size_warnings(cfg, arm_configs(cfg)) == []


def test_runs_go_seed_by_seed_so_a_stopped_sweep_is_paired(tmp_path, tiny_qwen2, tiny_llama, monkeypatch):
    """Every arm's seed 0 before any seed 1 (arms in dependency order within a seed): stopped after 4 of 6 runs,
    the sweep holds seeds 0-1 of every arm, which `--seeds 2` collects."""
    import distillkit.compare
    import distillkit.pipeline

    cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, seeds=3, arms={"kd": {}, "sft": {"train.kd.enabled": False}})
    order = []

    class Stop(Exception):
        pass

    def record(run, *a, **k):
        order.append((Path(run.output_dir).parent.name, run.train.seed))  # runs/<arm>/seed-<n>
        if len(order) == 4:
            raise Stop
    monkeypatch.setattr(distillkit.pipeline, "run_pipeline", record)
    monkeypatch.setattr(distillkit.pipeline, "stage_is_done", lambda run, stage: False)
    with pytest.raises(Stop):
        distillkit.compare.run_compare(cfg)
    assert order == [("kd", 0), ("sft", 0), ("kd", 1), ("sft", 1)]

@pytest.mark.slow
def test_an_after_arm_trains_on_from_the_other_arms_weights(tmp_path, tiny_qwen2, tiny_llama):
    import torch
    from safetensors.torch import load_file

    cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, seeds=1,
                 arms={"first": {}, "then": {"after": "first", "train.learning_rate": 1e-12}})
    results = run_compare(cfg)
    assert results.arms["then"].seeds_done == [0]
    runs = cfg.run_dir / "compare" / "runs"
    first = load_file(runs / "first" / "seed-0" / "train" / "model" / "model.safetensors")
    then = load_file(runs / "then" / "seed-0" / "train" / "model" / "model.safetensors")
    untrained = load_file(runs / "first" / "seed-0" / "train" / "student_init" / "model.safetensors")
    name = next(k for k in first if "layers.0.mlp" in k)
    # a learning rate of 1e-12 leaves the weights it started from: first's trained ones, not the untrained init
    assert torch.allclose(then[name], first[name], atol=1e-6)
    assert not torch.allclose(first[name], untrained[name], atol=1e-6)


@pytest.mark.slow
def test_two_arms_two_seeds_share_generation_and_reference_scores_and_resume(tmp_path, tiny_qwen2, tiny_llama,
                                                                            monkeypatch):
    from distillkit.evaluate import harness
    from distillkit.generate import stage as generate_stage

    starts: Counter = Counter()
    make_backend, evaluate_model = generate_stage.make_backend, harness.evaluate_model

    def counting_backend(*args, **kwargs):
        starts["teacher engine"] += 1
        return make_backend(*args, **kwargs)

    def counting_evaluate(path, *args, **kwargs):
        starts[str(path)] += 1
        return evaluate_model(path, *args, **kwargs)

    monkeypatch.setattr(generate_stage, "make_backend", counting_backend)
    monkeypatch.setattr(harness, "evaluate_model", counting_evaluate)
    cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, seeds=2, train_only=True,
                 arms={"sft": {}, "lr": {"train.learning_rate": 1e-3}})
    progress = []
    results = run_compare(cfg, on_run=lambda *a: progress.append(a[:4]))
    assert [p[2:] for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert starts["teacher engine"] == 1  # one teacher generation for the four runs
    assert starts[str(tiny_qwen2)] == 1  # the teacher scored once
    assert sum(v for k, v in starts.items() if k.endswith("student_init") or k == str(tiny_llama)) == 1
    assert sum(v for k, v in starts.items() if k.endswith("/train/model")) == 4  # each trained student
    root = cfg.run_dir / "compare"
    gens = {(root / "runs" / a / f"seed-{s}" / "generate").resolve() for a in ("sft", "lr") for s in (0, 1)}
    assert len(gens) == 1 and next(iter(gens)).parent == (root / "shared").resolve()

    saved = json.loads((root / "results.json").read_text())
    assert saved["baseline"] == "sft" and saved["seeds"] == 2 and set(saved["arms"]) == {"sft", "lr"}
    lr = results.arms["lr"]
    assert lr.seeds_done == [0, 1] and "distillkit_arith" in lr.vs_baseline
    iv = lr.pass_at_1["distillkit_arith"]
    assert iv.seeds == 2 and iv.questions == 3 and len(iv.per_seed) == 2 and iv.seed_variance_included
    assert "sft" not in [k for k, v in results.arms.items() if v.vs_baseline]  # the baseline has no difference
    assert set(results.reference["distillkit_arith"]) >= {"teacher", "student_before"}
    assert set(lr.seeds_needed) == {"distillkit_arith"}  # how many seeds the difference would need for +-3 points
    # student minus teacher, paired by question: the same questions, so the means subtract exactly
    vs_teacher = lr.vs_teacher["distillkit_arith"]
    assert vs_teacher.mean == pytest.approx(iv.mean - results.reference["distillkit_arith"]["teacher"])
    assert vs_teacher.seeds == 2 and vs_teacher.questions == 3
    text = (root / "comparison.md").read_text()
    assert text == comparison_markdown(results) and "| lr |" in text and "(baseline)" in text
    page = (root / "report.html").read_text()  # the chart: a row per arm, a dot per seed, the interval
    assert page.count("data-arm='lr'") == 1 and page.count("<circle") == 4 and "seed 1:" in page

    # Rerun: everything is finished, nothing runs again.
    starts.clear()
    run_compare(cfg)
    assert not starts


def test_compare_needs_the_evaluate_stage(tmp_path, tiny_qwen2, tiny_llama):
    cfg = recipe(tmp_path, tiny_qwen2, tiny_llama, arms={"a": {}, "b": {}})
    cfg.stages = ["generate", "train"]
    with pytest.raises(DistillkitError, match="needs the evaluate stage"):
        run_compare(cfg)


@pytest.mark.slow
def test_compare_on_the_real_smollm2_through_the_cli(tmp_path):
    """The CPU lab recipe as shipped (its arms: sft, kd), shrunk: 2 seeds on the real SmolLM2 teacher (vLLM) and
    student, lm-eval scoring on both held-out sets (in-template and unseen phrasings)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("vllm")
    run_dir = tmp_path / "lab"
    lab = Path(__file__).resolve().parents[1] / "recipes" / "lab" / "sft_vs_kd.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "distillkit", "compare", str(lab), f"output_dir={run_dir}",
         "generate.prompts.builtin_args.num=8", "generate.sampling.n=4", "generate.sampling.max_tokens=48",
         "train.num_train_epochs=1", "train.student.keep_layers=first:4", "evaluate.limit=3",
         "evaluate.num_samples=1", "evaluate.max_gen_toks=24", "evaluate.backend=hf", "--seeds", "2"],
        capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "compare: 4/4 runs done" in res.stdout and "| kd |" in res.stdout and "Traceback" not in res.stderr
    results = json.loads((run_dir / "compare" / "results.json").read_text())
    kd = results["arms"]["kd"]
    assert results["baseline"] == "sft" and kd["seeds_done"] == [0, 1]
    assert set(kd["vs_baseline"]) == set(kd["vs_teacher"]) == {"distillkit_arith_lab", "distillkit_arith_unseen"}
    assert len(list((run_dir / "compare" / "shared").glob("generate-*"))) == 1  # one teacher generation
