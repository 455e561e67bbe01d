"""`DistillTrainer`: TRL's SFTTrainer plus a memory-bounded soft-label KD term; on-policy trainers from the recipe.

Loss per optimizer step (global batch, all processes and accumulation steps together):

    loss = alpha * CE + (1 - alpha) * T^2 * D(teacher || student)
    CE   = sum of token NLL over the assistant tokens        / number of assistant tokens
    D    = sum of per-token divergence over soft-labelled tokens / number of soft-labelled tokens

Both denominators are global counts (Trainer's `num_items_in_batch` and our own `num_kd_items`), so
gradient accumulation and DDP give the same loss as one big batch.

The KD term is computed by `distillkit.train.losses.chunked_kd_loss` from the student's *final hidden
states* and its output projection, a chunk of tokens at a time: the (batch x sequence x vocab)
logits tensor is never built. The hidden states come from the backbone through the model's own
`forward` (patched to accept `return_hidden=True`), so DDP's gradient hooks, PEFT's LoRA layers
and bitsandbytes' 4-bit layers all stay in the path; TRL's fused CE cannot serve a KD loss.
"""

from __future__ import annotations

import functools
import logging
import time
import types
from typing import Any

from distillkit.train.data import IGNORE, KD_COLUMNS
from distillkit.train.trl_compat import add_train_tokens, check_class_hooks, check_instance_hooks, record_metric

log = logging.getLogger(__name__)

import torch  # noqa: E402  (this module is only imported by the train stage, after `require`)
from trl import SFTTrainer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


def _unwrap(model):
    """The HF PreTrainedModel under DDP/PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def add_hidden_forward(model) -> None:
    """Let `model(..., return_hidden=True)` return the backbone's final (normed) hidden states (B, T, H).

    Patched on the instance like TRL's fused LM head, and composed with it: without the flag the
    previous forward runs unchanged (generation, TRL's CE path).
    """
    if getattr(model, "_distillkit_hidden_forward", False):
        return
    previous = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, return_hidden=False, **kwargs):
        if not return_hidden:
            return previous(*args, **kwargs)
        kwargs.pop("labels", None)
        kwargs["use_cache"] = False
        return getattr(self, self.base_model_prefix)(*args, **kwargs).last_hidden_state

    model.forward = types.MethodType(forward, model)
    model._distillkit_hidden_forward = True


def output_projection(model):
    """What maps hidden states to logits: the LM head's weight when it is a plain Linear without bias,
    else the module itself as a callable (LoRA on the head, a quantized head)."""
    head = _unwrap(model).get_output_embeddings()
    if type(head) is torch.nn.Linear and head.bias is None:
        return head.weight
    return head


class LossCurveCallback(TrainerCallback):
    """Collects (step, loss, ce, kl or kl_sampled, tokens) at every log, and wall time for tokens/s."""

    def __init__(self):
        self.rows: list[dict] = []
        self.t_start: float | None = None
        self.train_seconds = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t_start = time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        if self.t_start is not None:
            self.train_seconds = time.perf_counter() - self.t_start

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs:
            self.rows.append({"step": state.global_step, **{k: logs[k] for k in
                              ("loss", "ce", "kl", "kl_sampled", "num_tokens", "learning_rate") if k in logs}})


class DistillTrainer(SFTTrainer):
    """SFTTrainer whose loss adds a chunked soft-label KD term (see the module docstring).

    Extra arguments:
        kd: a `KDConfig` (enabled, alpha, temperature, divergence, beta, teacher_probs, chunk_size).
        teacher: a loaded teacher model for `kd.teacher_probs == "live"` (same tokenizer), else None.
        teacher_map: a `SpecialMap` when the student keeps its own special tokens (`train.student.tokenizer: map`):
            the live teacher reads the student's ids moved to its own, and its logits come back on the student's.
    The train dataset must be built by `distillkit.train.data.build_train_dataset` (it carries the
    soft-label columns), with `dataset_kwargs={"skip_prepare_dataset": True}` and `DistillCollator`.
    """

    def __init__(self, *args, kd=None, teacher=None, teacher_map=None, **kwargs):
        self.kd = kd
        self.teacher = teacher
        self.teacher_map = teacher_map
        self._num_kd_items = None
        check_class_hooks()
        super().__init__(*args, **kwargs)
        check_instance_hooks(self)
        if self.use_kd:
            add_hidden_forward(_unwrap(self.model))
            if teacher is not None:
                add_hidden_forward(teacher)
                teacher.to(self.accelerator.device).eval().requires_grad_(False)  # this rank's device

    @property
    def use_kd(self) -> bool:
        return self.kd is not None and self.kd.enabled

    # Private hooks (trl_compat.py lists and checks them). The soft-label columns must survive
    # `remove_unused_columns`.
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None:
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, *KD_COLUMNS]))

    def _get_num_items_in_batch(self, batch_samples, device):
        """Also count the soft-labelled prediction targets of the whole global batch (for the KD mean)."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        if self.use_kd and self.kd.teacher_probs == "live":
            self._num_kd_items = num_items  # a live teacher labels every trained token
        elif self.use_kd and batch_samples and "kd_mask" in batch_samples[0]:
            n = sum(b["kd_mask"][..., 1:].sum() for b in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                n = self.accelerator.gather(n).sum()
            self._num_kd_items = n
        return num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        kd_inputs = {c: inputs.pop(c) for c in KD_COLUMNS if c in inputs}
        if not self.use_kd:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            value = loss[0] if isinstance(loss, tuple) else loss
            record_metric(self, mode, "ce", self.accelerator.gather_for_metrics(value.detach()).mean().item())
            return loss
        return self._compute_kd_loss(model, inputs, kd_inputs, num_items_in_batch)

    def _compute_kd_loss(self, model, inputs, kd_inputs, num_items_in_batch):
        from distillkit.train.losses import chunked_kd_loss, kd_metric_name

        mode = "train" if self.model.training else "eval"
        kd = self.kd
        labels = inputs.pop("labels")
        model_inputs = {k: v for k, v in inputs.items()}
        hidden = model(**model_inputs, return_hidden=True)  # (B, T, H), through DDP/PEFT
        # Position t predicts token t + 1: shift targets and soft labels by one.
        hidden = hidden[:, :-1]
        targets = labels[:, 1:]
        mask = targets != IGNORE
        teacher_kwargs: dict[str, Any] = {}
        if kd.teacher_probs == "live":
            t_inputs, projection = model_inputs, output_projection(self.teacher)
            if self.teacher_map is not None:  # the student's specials -> the teacher's, its logits -> the student's ids
                size = min(self.teacher.config.vocab_size, _unwrap(model).config.vocab_size)
                t_inputs = {**model_inputs, "input_ids": self.teacher_map.teacher_ids(model_inputs["input_ids"], size)}
                projection = self.teacher_map.live_projection(projection, size)
            with torch.no_grad():
                t_hidden = self.teacher(**t_inputs, return_hidden=True)[:, :-1]
            teacher_kwargs = {"teacher_hidden": t_hidden, "teacher_weight": projection}
            kd_mask = mask
        else:
            kd_mask = kd_inputs["kd_mask"][:, 1:] & mask
            teacher_kwargs = {"topk_ids": kd_inputs["kd_ids"][:, 1:], "topk_logprobs": kd_inputs["kd_logprobs"][:, 1:]}
        num_ce = mask.sum()
        num_kd = kd_mask.sum()
        _, ce_mean, kd_mean = chunked_kd_loss(
            hidden, output_projection(model), targets, mask=mask, kd_mask=kd_mask,
            alpha=kd.alpha, temperature=kd.temperature, divergence=kd.divergence, beta=kd.beta,
            teacher_probs=kd.teacher_probs, chunk_size=kd.chunk_size, **teacher_kwargs)
        # Means over this micro-batch -> sums -> divided by the global counts.
        global_ce = num_items_in_batch if num_items_in_batch is not None else num_ce
        global_kd = self._num_kd_items if (num_items_in_batch is not None and self._num_kd_items is not None) \
            else num_kd
        ce = ce_mean * num_ce / torch.as_tensor(global_ce, device=hidden.device).clamp(min=1)
        kl = kd_mean * num_kd / torch.as_tensor(global_kd, device=hidden.device).clamp(min=1)
        loss = kd.alpha * ce + (1 - kd.alpha) * kd.temperature ** 2 * kl
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # Like SFTTrainer: DDP averages gradients over ranks; undo it since the counts are global.
            loss = loss * self.accelerator.num_processes
            ce, kl = ce * self.accelerator.num_processes, kl * self.accelerator.num_processes
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        record_metric(self, mode, "ce", self.accelerator.gather_for_metrics(ce.detach()).mean().item() * steps)
        record_metric(self, mode, kd_metric_name(kd.teacher_probs),  # sampled labels: "kl_sampled", not a KL
                      self.accelerator.gather_for_metrics(kl.detach()).mean().item() * steps)
        n_tok = 0
        if mode == "train":
            if "attention_mask" in inputs:
                n_tok = inputs["attention_mask"].sum()
            else:
                n_tok = torch.tensor(inputs["input_ids"].numel(), device=hidden.device)
            n_tok = self.accelerator.gather_for_metrics(n_tok).sum().item()
        add_train_tokens(self, mode, n_tok)
        return loss
