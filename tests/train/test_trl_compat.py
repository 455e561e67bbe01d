"""The private TRL/transformers hooks DistillTrainer relies on (distillkit/train/trl_compat.py) still exist.

A TRL or transformers release that renames one fails here, naming it, instead of mid-run on a user's GPU."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from distillkit.errors import DistillkitError
from distillkit.train import trl_compat


def test_the_overridden_trainer_methods_exist_with_their_parameters():
    trl_compat.check_class_hooks()
    from distillkit.train.trainer import DistillTrainer

    for _owner, name, params in trl_compat.METHOD_HOOKS:
        ours = tuple(p for p in inspect.signature(getattr(DistillTrainer, name)).parameters if p != "self")
        assert ours == params, name  # our override takes what transformers passes


def test_sft_trainer_creates_the_attributes_we_write(tmp_path, tiny_llama, tiny_records):
    """Built the way the train stage builds it (a real SFTTrainer on a tiny model): the metrics dict and the
    token count are there, and the adapter's writers update what TRL logs."""
    from accelerate import PartialState
    from train_helpers import make_recipe

    from distillkit.train.stage import make_trainer, prepare_training

    cfg = make_recipe(tmp_path, tiny_records, tiny_llama)
    trainer = make_trainer(cfg, prepare_training(cfg, PartialState(cpu=True)))
    trl_compat.check_instance_hooks(trainer)
    trl_compat.record_metric(trainer, "train", "kl", 0.25)
    trl_compat.add_train_tokens(trainer, "train", 7)
    assert trainer._metrics["train"]["kl"][-1] == 0.25 and trainer._metrics["train"]["num_tokens"] == [7]


def test_a_renamed_hook_is_named_in_the_error(monkeypatch):
    import transformers

    monkeypatch.delattr(transformers.Trainer, "_get_num_items_in_batch")
    with pytest.raises(DistillkitError, match="Trainer._get_num_items_in_batch no longer exists"):
        trl_compat.check_class_hooks()
    with pytest.raises(DistillkitError, match="_total_train_tokens"):
        trl_compat.check_instance_hooks(SimpleNamespace(_metrics={"train": {}, "eval": {}}))


def test_gkd_is_importable_where_trl_keeps_it():
    config, trainer = trl_compat.gkd_classes()
    assert config.__name__ == "GKDConfig" and trainer.__name__ == "GKDTrainer"
