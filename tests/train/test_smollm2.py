"""A real student: derived from SmolLM2-135M-Instruct (8 of 30 layers), SFT + KL on its own soft labels."""

from __future__ import annotations

import pytest
from train_helpers import make_recipe, teacher_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smollm2_dir):
    from distillkit.train.stage import run_train

    records = teacher_records(smollm2_dir, num=8, topk=8, seed=5)
    cfg = make_recipe(tmp_path_factory.mktemp("smol"), records, smollm2_dir, topk=8,
                      keep_layers="first:8",
                      learning_rate=2e-4, num_train_epochs=3, per_device_train_batch_size=4, max_length=160,
                      packing=True, bf16=None, kd={"enabled": True, "alpha": 0.5, "teacher_probs": "topk_tail"})
    return cfg, records, run_train(cfg)


def _mean_ce(model_dir, cfg, records):
    """Teacher-forced CE of a saved model on the kept records' assistant tokens."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.train.batches import DistillCollator
    from distillkit.train.data import build_train_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ds, _ = build_train_dataset(Dataset.from_list(records), tok, 160, use_kd=False, packing=False)
    batch = DistillCollator(tok.pad_token_id)(list(ds))
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss.item()


def test_sft_plus_kl_lowers_the_loss_on_kept_records(trained):
    cfg, records, manifest = trained
    out = cfg.stage_dir("train")
    assert manifest.stats["student_init"]["kept_layers"] == list(range(8))
    assert any("pad_token" in c for c in manifest.stats["student_init"]["tokenizer_changes"])
    before, after = _mean_ce(out / "student_init", cfg, records), _mean_ce(out / "model", cfg, records)
    assert after < 0.8 * before
    curve = manifest.stats["loss_curve"]
    assert curve[-1]["kl"] < curve[0]["kl"] and curve[-1]["ce"] < curve[0]["ce"]


def test_saved_student_loads_and_generates(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, records, _ = trained
    model_dir = cfg.stage_dir("train") / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    assert model.config.num_hidden_layers == 8 and tok.pad_token_id != tok.eos_token_id
    assert "{% generation %}" in tok.chat_template
    enc = tok.apply_chat_template(records[0]["messages"], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > enc["input_ids"].shape[1] and text.strip()
