"""Every private TRL/transformers hook distillkit relies on, in one place, checked at start-up.

`DistillTrainer` (trainer.py) is TRL's `SFTTrainer` with a KD term. Four things it needs are not public API:

    hook                                         owner                      used for
    Trainer._set_signature_columns_if_needed()   transformers.Trainer       keep the soft-label columns
                                                                            through `remove_unused_columns`
    Trainer._get_num_items_in_batch(batch, dev)  transformers.Trainer       the global count of trained
                                                                            tokens; we add the KD count
    SFTTrainer._metrics[mode][name] (lists)      trl.SFTTrainer             log ce / kl beside TRL's metrics
    SFTTrainer._total_train_tokens (int)         trl.SFTTrainer             `num_tokens` when KD bypasses
                                                                            SFTTrainer.compute_loss

plus `trl.experimental.gkd` (GKDTrainer/GKDConfig, the on-policy path). A TRL or transformers release that
renames one of them would otherwise fail in the middle of a training run, or silently log nothing:
`check_hooks` runs when a `DistillTrainer` is built and names the hook that moved, and
tests/train/test_trl_compat.py fails on the same. The versions these were checked against are pyproject's
upper bounds (`trl<..`, `transformers<..`); scripts/setup.sh says how to move them.
"""

from __future__ import annotations

import inspect
from typing import Any

from distillkit.errors import DistillkitError

# (owner, method, its parameters after self): the overrides DistillTrainer defines.
METHOD_HOOKS = (
    ("transformers.Trainer", "_set_signature_columns_if_needed", ()),
    ("transformers.Trainer", "_get_num_items_in_batch", ("batch_samples", "device")),
)
# Attributes SFTTrainer.__init__ creates that DistillTrainer writes to.
ATTRIBUTE_HOOKS = ("_metrics", "_total_train_tokens")


def _versions() -> str:
    from importlib import metadata

    return ", ".join(f"{d} {metadata.version(d)}" for d in ("trl", "transformers"))


def _moved(what: str) -> DistillkitError:
    return DistillkitError(f"{what}: distillkit's trainer overrides it ({_versions()} installed). Install the "
                           "versions pyproject.toml allows (pip install 'distillkit[train]'), or report the "
                           "new TRL/transformers release as an issue")


def check_class_hooks() -> None:
    """The overridden methods exist on transformers' Trainer with the parameters DistillTrainer's overrides take."""
    import transformers

    for owner, name, params in METHOD_HOOKS:
        method = getattr(transformers.Trainer, name, None)
        if method is None:
            raise _moved(f"{owner}.{name} no longer exists")
        got = tuple(p for p in inspect.signature(method).parameters if p != "self")
        if got != params:
            raise _moved(f"{owner}.{name} now takes {got}, not {params}")


def check_instance_hooks(trainer: Any) -> None:
    """The attributes SFTTrainer creates and DistillTrainer writes to, on a built trainer."""
    metrics = getattr(trainer, "_metrics", None)
    if not isinstance(metrics, dict) or not all(hasattr(metrics.get(m), "__getitem__") for m in ("train", "eval")):
        raise _moved("trl.SFTTrainer._metrics is no longer a {'train': ..., 'eval': ...} dict of metric lists")
    if not isinstance(getattr(trainer, "_total_train_tokens", None), (int, float)):
        raise _moved("trl.SFTTrainer._total_train_tokens is no longer a token count")


def record_metric(trainer: Any, mode: str, name: str, value: float) -> None:
    """Log `name` beside TRL's own metrics (averaged by TRL over the logging interval)."""
    trainer._metrics[mode][name].append(value)


def add_train_tokens(trainer: Any, mode: str, count: float) -> None:
    """Count trained tokens where SFTTrainer.compute_loss, which normally counts them, is bypassed."""
    if mode == "train":
        trainer._total_train_tokens += count
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]


def gkd_classes() -> tuple[Any, Any]:
    """(GKDConfig, GKDTrainer): TRL's on-policy distillation, which TRL keeps under `trl.experimental`."""
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as e:
        raise _moved(f"trl.experimental.gkd cannot be imported ({e})") from e
    return GKDConfig, GKDTrainer
