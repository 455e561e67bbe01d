"""A finished run folder (generate, filter, train, evaluate outputs) built without running any stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distillkit.config import validate_recipe
from distillkit.records import StageOutput, make_record, record_features
from distillkit.schemas.filter import FilterStats
from distillkit.schemas.train import TrainStats

FUNNEL = [
    {"step": "input", "in": 8, "rejected": 0, "out": 8},
    {"step": "truncation", "in": 8, "rejected": 2, "out": 6},
    {"step": "math", "in": 6, "rejected": 3, "out": 3},
]
OUTCOMES = {"truncation": {"rejected": {"truncated_at_max_tokens": 2}, "passed": {"complete": 6}, "cannot_judge": {}},
            "math": {"rejected": {"wrong_answer": 2, "no_boxed_answer": 1}, "passed": {"correct": 3}, "cannot_judge": {}}}


def _records(n: int, kept: bool) -> list[dict]:
    return [make_record(prompt_id=f"p{i // 2}", sample_index=i % 2, problem=f"What is {i} plus 1?",
                        gold_answer=str(i + 1), completion=f"<think>\n{i}+1</think> \\boxed{{{i + 1}}}",
                        verdicts=[{"verifier": "math", "passed": kept, "reason": "correct" if kept else "wrong_answer"}])
            for i in range(n)]


def make_run(root: Path, model_dir: Path, **publish) -> object:
    cfg = validate_recipe({
        "name": "pubtest", "output_dir": str(root / "run"),
        "generate": {"teacher": {"model": "builtin:smollm2-135m-instruct"}, "prompts": {"builtin": "arith"}},
        "train": {"student": {"model": "builtin:smollm2-135m-instruct"}, "method": "lora"},
        "evaluate": {"tasks": ["distillkit_arith"], "backend": "hf", "num_samples": 4, "max_gen_toks": 64},
        "publish": {"model_repo": "someone/pubtest-student", "dataset_repo": "someone/pubtest-traces", **publish},
    })
    gen = StageOutput(cfg.stage_dir("generate"), "generate", "g")
    gen.begin()
    gen.finish(counts={"records": 8, "prompts": 4})
    filt = StageOutput(cfg.stage_dir("filter"), "filter", "f")
    filt.begin()
    filt.write_shard(0, _records(3, True), record_features())
    filt.finish(counts={"input": 8, "kept": 3, "rejected": 5, "prompts_input": 4, "prompts_kept": 2},
                stats=FilterStats(funnel=FUNNEL, reasons={step: {**o["rejected"], **o["passed"]} for step, o in OUTCOMES.items()},
                                  outcomes=OUTCOMES).dump())  # as the filter stage writes them
    StageOutput(cfg.stage_dir("filter") / "rejected", "filter", "f").write_shard(0, _records(5, False), record_features())
    train = cfg.stage_dir("train")
    shutil.copytree(model_dir, train / "model")
    (train / "adapter").mkdir(parents=True)
    (train / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(train / "student_init"), "peft_type": "LORA", "r": 16}))
    (train / "adapter" / "adapter_model.safetensors").write_bytes(b"not really weights")
    tr = StageOutput(train, "train", "t")
    tr.begin()
    tr.finish(stats=TrainStats(tokens_seen=12345, tokens_per_s=390.0, train_seconds=31.7, global_steps=3,
                               final_train_loss=0.52, method="lora", bf16=False, trainable_params=4096,
                               files={"adapter": "adapter", "model": "model"}).dump())  # as the train stage writes them
    from distillkit.schemas.evaluate import EvalResults, ModelResult, Protocol, TaskScore

    def score(pass_at_1, stderr):
        return TaskScore(task="distillkit_arith", metric="pass@1", filter="all_samples", num_questions=100,
                         num_samples=4, pass_at_1=pass_at_1, stderr=stderr, pass_at_k=0.3)

    # written by the evaluate stage's own schema, as the stage writes it
    EvalResults(
        protocol=Protocol(backend="hf", num_samples=4, temperature=0.6, top_p=0.95, max_gen_toks=64),
        models={key: ModelResult(model=path, tasks={"distillkit_arith": score(p, se)})
                for key, path, p, se in [("teacher", "t", 0.15, 0.03), ("student_before", "b", 0.05, 0.02),
                                         ("student_after", "a", 0.1425, 0.031)]},
    ).write(cfg.stage_dir("evaluate") / "results.json")
    (cfg.stage_dir("evaluate") / "comparison.md").write_text("| task | ... |\n")
    return cfg


@pytest.fixture
def make_run_cfg(tmp_path, tiny_qwen2):
    """Factory: a finished run folder with `publish` settings overridden."""
    return lambda **publish: make_run(tmp_path, Path(tiny_qwen2), **publish)


@pytest.fixture
def run_cfg(tmp_path, tiny_qwen2):
    return make_run(tmp_path, Path(tiny_qwen2))
