"""FSDP2 for real on 2 CPU processes (gloo): what the multi-GPU recipes run, sharded, saved, resumed.

accelerate alone would run these as gloo DDP with full parameters (a silent fallback); distillkit switches the ranks'
state to FSDP2 (distillkit.train.distributed). Each test compares with the same global batch in one process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_helpers import make_recipe, teacher_records

from distillkit.errors import DistillkitError


ROOT = Path(__file__).resolve().parents[2]
FSDP = dict(accelerate_config=str(ROOT / "recipes" / "accelerate" / "fsdp.yaml"), num_processes=2,
            per_device_train_batch_size=2)


@pytest.fixture(scope="module")
def records(tiny_qwen2):
    return teacher_records(tiny_qwen2, num=4, seed=1)


def run(tmp_path, name, records, student, teacher, **train):
    from distillkit.train.stage import run_train

    cfg = make_recipe(tmp_path / name, records, student, **{"num_train_epochs": 3, **train})
    cfg.generate.teacher.model = str(teacher)
    return cfg, run_train(cfg)


def curve(manifest, key="loss"):
    return [p[key] for p in manifest.stats["loss_curve"]]


def assert_sharded_fsdp2(manifest):
    d = manifest.stats["distributed"]
    assert d["type"] == "FSDP" and d["fsdp_version"] == 2 and d["num_processes"] == 2
    assert d["mixed_precision"] == "no" and d["sharded"] == 1.0  # every trainable parameter held as a shard
    assert manifest.stats["bf16"] is False  # what the manifest says is what ran


@pytest.mark.slow
def test_full_fine_tuning_shards_matches_one_process_and_saves_the_gathered_weights(tmp_path, records, tiny_llama,
                                                                                    tiny_qwen2):
    import torch
    from transformers import AutoModelForCausalLM

    kd = {"kd": {"enabled": True, "alpha": 0.5, "teacher_probs": "topk_tail"}}
    one_cfg, one = run(tmp_path, "one", records, tiny_llama, tiny_qwen2, per_device_train_batch_size=4, **kd)
    cfg, fsdp = run(tmp_path, "fsdp", records, tiny_llama, tiny_qwen2, **FSDP, **kd)
    assert one.stats["distributed"] == {"type": "NO", "num_processes": 1, "mixed_precision": "no", "sharded": 0.0}
    assert_sharded_fsdp2(fsdp)
    for key in ("loss", "ce", "kl"):
        assert curve(fsdp, key) == pytest.approx(curve(one, key), rel=1e-4)
    cpu_form = (cfg.stage_dir("train") / "accelerate_cpu.yaml").read_text()
    assert "mixed_precision: 'no'" in cpu_form and "fsdp_version: 2" in cpu_form
    # The saved student is complete (config + every weight) and holds what the one-process run trained.
    folder = cfg.stage_dir("train") / "model"
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    a = AutoModelForCausalLM.from_pretrained(one_cfg.stage_dir("train") / "model", dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys()
    start = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).state_dict()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    assert any(not torch.equal(start[n], b[n]) for n in b)  # and it was trained


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_under_fsdp_match_one_process(tmp_path, records, tiny_llama, tiny_qwen2, method):
    """LoRA, and QLoRA (bitsandbytes 4-bit base + LoRA; bitsandbytes runs it on CPU), sharded over 2 ranks."""
    lora = {"method": method, "lora": {"dropout": 0.0}}  # dropout draws differ per rank: off, to compare curves
    one_cfg, one = run(tmp_path, "one", records, tiny_llama, tiny_qwen2, per_device_train_batch_size=4, **lora)
    cfg, fsdp = run(tmp_path, "fsdp", records, tiny_llama, tiny_qwen2, **FSDP, **lora)
    assert_sharded_fsdp2(fsdp)
    assert curve(fsdp) == pytest.approx(curve(one), rel=1e-4)
    out = cfg.stage_dir("train")
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "model" / "config.json").exists()  # merged into the student


@pytest.mark.slow
def test_live_teacher_has_real_weights_on_every_rank(tmp_path, records, tiny_llama, tiny_qwen2):
    """fsdp.yaml loads with fsdp_cpu_ram_efficient_loading: a teacher loaded like the student would be all zeros on
    rank 1 (FSDP broadcasts only what it wraps). The KL of rank 1's half of the batch is in every step's mean, so the
    curve equals the one-process run's only if both ranks see the real teacher."""
    kd = {"kd": {"enabled": True, "alpha": 0.5, "teacher_probs": "live"}}
    _, one = run(tmp_path, "one", records, tiny_llama, tiny_qwen2, per_device_train_batch_size=4, **kd)
    _, fsdp = run(tmp_path, "fsdp", records, tiny_llama, tiny_qwen2, **FSDP, **kd)
    assert_sharded_fsdp2(fsdp)
    assert curve(fsdp, "kl") == pytest.approx(curve(one, "kl"), rel=1e-4)


RUN = """
import sys
sys.path.insert(0, {helpers!r})
from train_helpers import make_recipe, teacher_records
from distillkit.train.stage import run_train
cfg = make_recipe({folder!r}, teacher_records({teacher!r}, num=4, seed=1), {student!r}, **{train!r})
cfg.generate.teacher.model = {teacher!r}
run_train(cfg)
"""


def ranks_running(folder: Path) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(folder) in part for part in p.info["cmdline"] or []):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_killed_fsdp_run_resumes_from_its_sharded_checkpoint(tmp_path, records, tiny_llama, tiny_qwen2):
    train = {"num_train_epochs": 12, "save_steps": 1, **FSDP}  # 12 steps, a sharded checkpoint after each
    _, whole = run(tmp_path, "whole", records, tiny_llama, tiny_qwen2, **train)
    folder = tmp_path / "killed"
    code = RUN.format(helpers=str(ROOT / "tests" / "train"), folder=str(folder), teacher=str(tiny_qwen2),
                      student=str(tiny_llama), train=train)
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = folder / "train" / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # distillkit and the launcher, mid-run (the ranks have sessions of their own)
    proc.wait()
    # ... and the ranks go down with them instead of training on, orphaned
    deadline = time.time() + 60
    while ranks_running(folder) and time.time() < deadline:
        time.sleep(0.2)
    assert not ranks_running(folder)
    assert state.exists() and not (folder / "train" / "manifest.json").exists()
    cfg = make_recipe(folder, records, tiny_llama, **train)
    cfg.generate.teacher.model = str(tiny_qwen2)
    from distillkit.train.stage import run_train

    resumed = run_train(cfg)
    start = int(resumed.stats["resumed_from"].split("-")[1])
    assert 1 <= start < 12 and resumed.stats["global_steps"] == whole.stats["global_steps"] == 12
    assert_sharded_fsdp2(resumed)
    reference = {p["step"]: p["loss"] for p in whole.stats["loss_curve"]}
    done = {p["step"]: p["loss"] for p in resumed.stats["loss_curve"]}
    # the curve up to the checkpoint comes from it, the rest was trained after the resume: every step once, and
    # each as the undisturbed run had it
    assert [p["step"] for p in resumed.stats["loss_curve"]] == list(range(1, 13))
    assert [done[s] for s in range(1, 13)] == pytest.approx([reference[s] for s in range(1, 13)], rel=1e-4)
    assert (cfg.stage_dir("train") / "model" / "model.safetensors").exists()


def test_a_distributed_config_that_cannot_run_here_stops_with_the_key_and_the_fix(tmp_path):
    from distillkit.config import validate_recipe
    from distillkit.train.launch import distributed_problems

    def problems(path, gpu):
        cfg = validate_recipe({"name": "t", "output_dir": str(tmp_path), "train": {"accelerate_config": str(path)}})
        return distributed_problems(cfg.train, has_gpu=gpu)

    zero3 = ROOT / "recipes" / "accelerate" / "zero3.yaml"
    cpu = problems(zero3, gpu=False)
    assert any("DeepSpeed, which distillkit runs on GPUs only" in p and "fsdp.yaml" in fix for p, fix in cpu)
    assert all(p.startswith("train.accelerate_config=") and fix for p, fix in cpu)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        assert any("not installed" in p for p, _ in problems(zero3, gpu=True))
    fsdp1 = tmp_path / "fsdp1.yaml"
    fsdp1.write_text((ROOT / "recipes" / "accelerate" / "fsdp.yaml").read_text().replace("fsdp_version: 2",
                                                                                         "fsdp_version: 1"))
    assert any("FSDP version 1" in p and "fsdp_version: 2" in fix for p, fix in problems(fsdp1, gpu=False))
    assert problems(fsdp1, gpu=True) == []  # on GPUs FSDP1 is accelerate's to run
    assert problems(ROOT / "recipes" / "accelerate" / "fsdp.yaml", gpu=False) == []
    assert problems(ROOT / "recipes" / "accelerate" / "ddp.yaml", gpu=False) == []


def test_preflight_stops_on_a_distributed_config_that_would_fall_back(tmp_path):
    import torch

    from distillkit.config import validate_recipe
    from distillkit.preflight import check_distributed

    cfg = validate_recipe({"name": "t", "output_dir": str(tmp_path),
                           "train": {"accelerate_config": str(ROOT / "recipes" / "accelerate" / "zero3.yaml")}})
    findings = check_distributed(cfg.train)
    if not torch.cuda.is_available():
        assert findings and all(f.check == "distributed" and f.severity == "error" for f in findings)
        assert any("fsdp.yaml" in f.fix for f in findings)
    cfg.train.accelerate_config = str(ROOT / "recipes" / "accelerate" / "fsdp.yaml")
    assert check_distributed(cfg.train) == []
    cfg.train.accelerate_config = str(tmp_path / "missing.yaml")
    assert "no such file" in check_distributed(cfg.train)[0].message
