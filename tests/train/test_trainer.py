"""The train stage on tiny models: KD wiring, LoRA gradients, QLoRA, resume, DDP over 2 CPU processes, on-policy."""

from __future__ import annotations

import math

import pytest
from train_helpers import make_recipe, teacher_records


def _curve(manifest, key="loss"):
    return [row[key] for row in manifest.stats["loss_curve"]]


def test_lora_gradients_reach_only_lora_params(tmp_path, tiny_qwen2, tiny_llama, tiny_records):
    from datasets import Dataset

    from distillkit.student.build import build_student_init, load_student
    from distillkit.train.batches import DistillCollator
    from distillkit.train.data import build_train_dataset
    from distillkit.train.stage import build_trainer, sft_config

    cfg = make_recipe(tmp_path, tiny_records, tiny_llama, method="lora", lora={"r": 4, "dropout": 0.0},
                      kd={"enabled": True, "alpha": 0.3})
    build_student_init(cfg.train.student, tmp_path / "init", dtype="float32")
    model, tok = load_student(cfg.train, tmp_path / "init")
    ds, _ = build_train_dataset(Dataset.from_list(tiny_records), tok, 128, use_kd=True, packing=False)
    trainer = build_trainer(cfg, model, tok, ds, sft_config(cfg, tmp_path, bf16=False))
    batch = DistillCollator(tok.pad_token_id)([ds[0], ds[1]])
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    with_grad = {n for n, p in trainer.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any("lora_B" in n for n in with_grad)  # B starts at zero, so only B moves on step one
    frozen = [p for n, p in trainer.model.named_parameters() if "lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in frozen)


def test_sft_plus_kd_trains_logs_ce_and_kl_and_saves(tmp_path, tiny_llama, tiny_records):
    """tiny_llama learns from tiny_qwen2's soft labels (same tokenizer, different weights: a real KL)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.records import read_manifest
    from distillkit.train.stage import run_train

    cfg = make_recipe(tmp_path, tiny_records, tiny_llama, num_train_epochs=4, packing=True, max_length=256,
                      per_device_train_batch_size=1, report_to=["tensorboard"],
                      kd={"enabled": True, "alpha": 0.25, "temperature": 2.0, "teacher_probs": "topk_tail"})
    m = run_train(cfg)
    # TRL's report_to: TensorBoard gets the CE and KL curves the manifest records.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (cfg.stage_dir("train") / "checkpoints" / "runs").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    assert [e.value for e in board.Scalars("train/kl")] == pytest.approx(_curve(m, "kl"), rel=1e-5)
    assert [e.value for e in board.Scalars("train/ce")] == pytest.approx(_curve(m, "ce"), rel=1e-5)
    first = m.stats["loss_curve"][0]
    assert first["loss"] == pytest.approx(0.25 * first["ce"] + 0.75 * 4.0 * first["kl"], rel=1e-4)
    assert first["kl"] > 0  # two random tiny models are both near uniform: a small but real KL
    assert _curve(m, "kl")[-1] < first["kl"] and _curve(m, "ce")[-1] < first["ce"]
    data = m.stats["data"]
    assert m.counts["tokens_seen"] == m.stats["tokens_seen"] == 4 * data["num_tokens"]  # padding-free: no pad
    assert m.stats["tokens_per_s"] > 0 and m.stats["peak_memory"]["cpu_max_rss_bytes"] > 0
    assert read_manifest(cfg.stage_dir("train")).config_hash == m.config_hash
    model_dir = cfg.stage_dir("train") / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tok.pad_token_id != tok.eos_token_id and model.config.num_hidden_layers == 2
    ids = tok.apply_chat_template(tiny_records[0]["messages"], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=5, do_sample=False).shape[1] > ids.shape[1]
    assert (cfg.stage_dir("train") / "student_init" / "config.json").exists()
    assert run_train(cfg).finished_at == m.finished_at  # complete for this config: not rerun


def test_qlora_run_on_cpu_saves_adapter_and_merged_model(tmp_path, tiny_llama, tiny_records):
    from transformers import AutoModelForCausalLM

    from distillkit.train.stage import run_train

    cfg = make_recipe(tmp_path, tiny_records, tiny_llama, method="qlora", lora={"r": 4},
                      kd={"enabled": True}, sft_args={"max_steps": 2})
    m = run_train(cfg)
    assert m.stats["global_steps"] == 2 and all(x == x for x in _curve(m))  # finite
    assert 0 < m.stats["trainable_params"] < m.stats["student_init"]["num_params"] / 5
    out = cfg.stage_dir("train")
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert not hasattr(merged.config, "quantization_config")  # a plain model any loader reads


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, tiny_llama, tiny_records):
    from transformers import TrainerCallback

    from distillkit.train.stage import run_train

    # LoRA dropout makes the curve depend on the RNG state, which the checkpoint must restore.
    common = dict(method="lora", lora={"r": 4, "dropout": 0.1}, kd={"enabled": True}, save_steps=2,
                  num_train_epochs=2, per_device_train_batch_size=4)
    full = run_train(make_recipe(tmp_path / "a", tiny_records, tiny_llama, **common))
    assert full.stats["global_steps"] == 4

    class StopAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise Interrupt  # killed after checkpoint-2 was written, mid-epoch-2

    with pytest.raises(Interrupt):
        run_train(make_recipe(tmp_path / "b", tiny_records, tiny_llama, **common), callbacks=[StopAtStep3()])
    # The same command again (train.resume defaults to true): it continues, nothing is lost.
    resumed = run_train(make_recipe(tmp_path / "b", tiny_records, tiny_llama, **common))
    assert resumed.stats["resumed_from"] == "checkpoint-2"
    assert [r["step"] for r in resumed.stats["loss_curve"]][-2:] == [3, 4]
    assert _curve(resumed)[-2:] == pytest.approx(_curve(full)[-2:], rel=1e-5)
    assert _curve(resumed, "kl")[-2:] == pytest.approx(_curve(full, "kl")[-2:], rel=1e-4)
    assert resumed.stats["tokens_seen"] == full.stats["tokens_seen"]
    assert resumed.config_hash == full.config_hash  # resume does not change what the run is

    # train.resume=false: the checkpoints are discarded and the run starts over.
    with pytest.raises(Interrupt):
        run_train(make_recipe(tmp_path / "c", tiny_records, tiny_llama, **common), callbacks=[StopAtStep3()])
    fresh = run_train(make_recipe(tmp_path / "c", tiny_records, tiny_llama, **common, resume=False))
    assert fresh.stats["resumed_from"] is None and [r["step"] for r in fresh.stats["loss_curve"]] == [1, 2, 3, 4]
    assert _curve(fresh) == pytest.approx(_curve(full), rel=1e-5)


@pytest.mark.parametrize("teacher_probs", ["topk_tail", "live"])
def test_ddp_two_cpu_processes_match_one_process(tmp_path, tiny_llama, tiny_qwen2, teacher_probs):
    """Same global batch (4 = 2 processes x 2 vs 1 x 4): same loss, CE and KL at every step
    (stored soft labels, or a live teacher on every rank)."""
    from distillkit.train.stage import run_train

    records = teacher_records(tiny_qwen2, num=4, seed=1)
    common = dict(num_train_epochs=3, kd={"enabled": True, "alpha": 0.5, "teacher_probs": teacher_probs})

    def recipe(folder, **kw):
        cfg = make_recipe(tmp_path / folder, records, tiny_llama, **common, **kw)
        cfg.generate.teacher.model = str(tiny_qwen2)
        return cfg

    single = run_train(recipe("one", per_device_train_batch_size=4))
    ddp = run_train(recipe("two", per_device_train_batch_size=2, num_processes=2))
    assert ddp.stats["num_processes"] == 2 and single.stats["num_processes"] == 1
    for key in ("loss", "ce", "kl"):
        assert _curve(ddp, key) == pytest.approx(_curve(single, key), rel=1e-4)
    assert ddp.stats["tokens_seen"] == single.stats["tokens_seen"]


def test_on_policy_runs_through_trl_distillation_trainer(tmp_path, tiny_llama, tiny_qwen2, tiny_records):
    from distillkit.train.stage import run_train

    cfg = make_recipe(tmp_path, tiny_records[:4], tiny_llama, on_policy={"enabled": True, "max_new_tokens": 8},
                      kd={"enabled": True, "divergence": "reverse_kl"})
    cfg.generate.teacher.model = str(tiny_qwen2)
    m = run_train(cfg)
    assert m.stats["global_steps"] == 2  # 4 prompts, batch 2, one epoch: one step per batch of prompts
    losses = _curve(m)
    assert len(losses) == 2 and all(0 <= x < 50 for x in losses)  # per-token divergence: finite, non-negative
    assert (cfg.stage_dir("train") / "model" / "config.json").exists()


@pytest.mark.parametrize("stored_labels,batch,accumulation", [(True, 4, 1), (False, 2, 2)])
def test_live_teacher_kd_first_step_matches_full_vocab_kl(tmp_path, tiny_llama, tiny_qwen2, tiny_records,
                                                           stored_labels, batch, accumulation):
    """`kd.teacher_probs: live`: the generate stage's teacher runs beside the student; the first logged KL is
    the full-vocabulary forward KL of the untrained student over every assistant token of the optimizer step
    (computed here directly), whether or not the records also carry stored soft labels (whose mask must
    not be used) and across gradient accumulation (global token count)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from distillkit.student.build import load_student
    from distillkit.train.data import IGNORE, build_train_dataset
    from distillkit.train.stage import run_train

    records = tiny_records[:4] if stored_labels else \
        [{k: v for k, v in r.items() if k not in ("topk_ids", "topk_logprobs")} for r in tiny_records[:4]]
    cfg = make_recipe(tmp_path, records, tiny_llama, topk=4 if stored_labels else 0, max_length=256,
                      per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      kd={"enabled": True, "alpha": 0.0, "temperature": 2.0, "teacher_probs": "live"})
    cfg.generate.teacher.model = str(tiny_qwen2)
    m = run_train(cfg)
    first = m.stats["loss_curve"][0]
    assert m.stats["kd"]["teacher_probs"] == "live" and len(m.stats["loss_curve"]) == 1

    student, tok = load_student(cfg.train, cfg.stage_dir("train") / "student_init")
    teacher = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    ds, _ = build_train_dataset(Dataset.from_list(records), tok, 256, use_kd=True, packing=False,
                                require_topk=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in ds:
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor(ex["labels"][1:])
            s = (student(ids).logits[0, :-1] / 2.0).log_softmax(-1)
            t = (teacher(ids).logits[0, :-1] / 2.0).log_softmax(-1)
            kl = (t.exp() * (t - s)).sum(-1)[labels != IGNORE]
            total, count = total + kl.sum().item(), count + kl.numel()
    assert first["kl"] == pytest.approx(total / count, rel=1e-4)
    assert first["loss"] == pytest.approx(4.0 * first["kl"], rel=1e-4)  # alpha 0: T^2 * KL


def test_on_policy_mixed_with_stored_traces_runs_through_gkd(tmp_path, tiny_llama, tiny_qwen2, tiny_records):
    """on_policy.lmbda < 1 mixes student samples with the stored traces (TRL's GKDTrainer)."""
    from distillkit.train.stage import run_train

    cfg = make_recipe(tmp_path, tiny_records[:4], tiny_llama,
                      on_policy={"enabled": True, "lmbda": 0.5, "max_new_tokens": 8},
                      kd={"enabled": True, "divergence": "jsd", "beta": 0.5}, sft_args={"max_steps": 2})
    cfg.generate.teacher.model = str(tiny_qwen2)
    m = run_train(cfg)
    assert m.stats["global_steps"] == 2
    assert all(0 <= x <= math.log(2) + 1e-4 for x in _curve(m))  # a per-token JSD (beta 0.5, T 1) is <= log 2
    assert (cfg.stage_dir("train") / "model" / "config.json").exists()
