"""On-policy distillation through TRL (the student samples, a teacher scores each token): the trainer for a live
teacher, and what the served teacher's trainer (`distillkit.train.served`) shares with it."""

from __future__ import annotations

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError


def check_shared_vocabulary(teacher_tokenizer, student_tokenizer, teacher_name: str,
                            key: str = "kd.teacher_probs=live") -> None:
    """Refuse a live teacher whose token ids do not mean the student's (its probabilities index the student's).

    One `get_vocab()` per side and one pass: linear in the vocabulary. (A check that rebuilt the teacher's
    vocabulary per student token sat for 15 minutes on SmolLM2's 49k and would take hours at 152k;
    tests/train/test_live_vocabulary.py runs this one on the real 152k and 128k tokenizers.)"""
    t_vocab, s_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if any(s_vocab.get(k) != v for k, v in t_vocab.items()) or len(teacher_tokenizer) > len(student_tokenizer):
        raise DistillkitError(f"{key} needs a teacher with the student's vocabulary; "
                              f"{teacher_name} tokenizes differently. Use stored top-k soft labels "
                              "from a compatible teacher, or kd.enabled: false")


def trl_beta(kd) -> float:
    """TRL's generalized-JSD beta for `kd.divergence`: 1 is reverse KL, 0 forward KL, `kd.beta` for jsd."""
    return {"reverse_kl": 1.0, "forward_kl": 0.0}.get(kd.divergence, kd.beta)


def prompt_rows(records) -> list[dict]:
    """The records' chats without the trained turn, as TRL's on-policy trainers read prompts."""
    return [{"prompt": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in records]


def on_policy_args(args, num_prompts: int | None = None) -> dict:
    """The SFTConfig settings TRL's on-policy configs share; refuses a generation batch larger than the prompts
    (TRL samples whole batches of per_device_train_batch_size x gradient_accumulation_steps x processes prompts,
    and with fewer prompts transformers stops on an empty dataloader)."""
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    if num_prompts is not None and num_prompts < batch:
        raise DistillkitError(
            f"train.on_policy samples batches of train.per_device_train_batch_size x gradient_accumulation_steps "
            f"x processes = {batch} prompts, but the training data has {num_prompts}; lower "
            "train.gradient_accumulation_steps or train.per_device_train_batch_size, or add prompts")
    return {k: v for k, v in args.to_dict().items()
            if k in ("output_dir", "learning_rate", "num_train_epochs", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "gradient_checkpointing", "bf16", "seed", "data_seed",
                     "save_steps", "logging_steps", "report_to", "use_cpu", "include_num_input_tokens_seen",
                     "disable_tqdm", "gradient_checkpointing_kwargs")}


def build_on_policy_trainer(cfg: RecipeConfig, model, tokenizer, records, args):
    """On-policy distillation: the student samples, a live teacher scores, per-token divergence.

    `on_policy.lmbda == 1` (only student samples) uses TRL's DistillationTrainer; `lmbda < 1` mixes
    student samples with the stored traces through TRL's GKDTrainer. The divergence is generalized JSD with `beta` = 1 for reverse KL, 0 for
    forward KL and `kd.beta` for jsd, at `kd.temperature`.
    """
    from distillkit.models import resolve_model
    from distillkit.train.data import record_to_messages

    t = cfg.train
    if t.kd.divergence not in ("forward_kl", "reverse_kl", "jsd"):  # registered in distillkit.registry, not in TRL
        raise DistillkitError(f"train.kd.divergence={t.kd.divergence!r}: on-policy training with a live teacher runs "
                              "TRL's generalized JSD, which has forward_kl, reverse_kl and jsd; choose one of them, "
                              "or kd.teacher_probs: served (distillkit's loss)")
    beta = trl_beta(t.kd)
    teacher_path = resolve_model(cfg.generate.teacher.model)
    common = on_policy_args(args, len(records) if t.on_policy.lmbda >= 1.0 else None)
    from datasets import Dataset

    if t.on_policy.lmbda >= 1.0:
        from trl import DistillationConfig, DistillationTrainer

        prompts = prompt_rows(records)
        dargs = DistillationConfig(**common, beta=beta, temperature=t.kd.temperature,
                                   max_completion_length=t.on_policy.max_new_tokens)
        return DistillationTrainer(model=model, teacher_model=teacher_path, args=dargs,
                                   train_dataset=Dataset.from_list(prompts), processing_class=tokenizer)
    from distillkit.train.trl_compat import gkd_classes

    GKDConfig, GKDTrainer = gkd_classes()
    chats = [{"messages": record_to_messages(r)} for r in records]
    gargs = GKDConfig(**common, lmbda=t.on_policy.lmbda, beta=beta, temperature=t.kd.temperature,
                      max_new_tokens=t.on_policy.max_new_tokens, max_length=t.max_length)
    return GKDTrainer(model=model, teacher_model=teacher_path, args=gargs, train_dataset=Dataset.from_list(chats),
                      processing_class=tokenizer)
