"""Stage 3, `distillkit train`: kept traces -> a trained student (SFT + soft-label KD, or on-policy).

Reads the filter's kept records (the generate output when the recipe has no filter stage), or the
mixture of `train.sources` (see `distillkit.train.mixture`), and writes `<run>/train/`:

    student_init/     the student before training (kept layers, fixed tokenizer): evaluation's "before"
    checkpoints/      Trainer checkpoints (`train.save_steps`); `train.resume` continues from the last;
                      TensorBoard logs under checkpoints/runs when `train.report_to` names it
    adapter/          LoRA/QLoRA adapter (PEFT format)
    model/            the trained model: full weights, or the adapter merged into student_init
    manifest.json     written last: tokens seen, tokens/s, loss curves (CE and KL), peak memory, and
                      with `train.sources` the mixture's composition (stats.mixture)
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError, require
from distillkit.faults import operation
from distillkit.records import Manifest, StageOutput, StageRecords, read_manifest
from distillkit.schemas.train import TrainStats
from distillkit.stage_hash import stage_config_hash
from distillkit.train.distributed import describe as describe_distributed
from distillkit.train.on_policy import build_on_policy_trainer, check_shared_vocabulary

log = logging.getLogger(__name__)


def input_dir(cfg: RecipeConfig) -> Path:
    """Where the training records are: the score output, the filter output, or the generate output."""
    return cfg.records_dir


def train_config_hash(cfg: RecipeConfig) -> str:
    """The stage hash with `train.resume` ignored: resuming must continue the same run, not start another."""
    same = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": False})})
    return stage_config_hash(same, "train")


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: Trainer writes trainer_state.json last, so a folder without it is one that a
    kill (or a full disk) cut short, and resuming from it would fail; the one before it is used instead."""
    import re

    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))
             and p.is_dir() and (p / "trainer_state.json").exists()]
    return max(steps)[1] if steps else None


def sft_config(cfg: RecipeConfig, out: Path, bf16: bool):
    """trl.SFTConfig from the recipe; `train.sft_args` override anything set here."""
    torch = require("torch", "train")
    from trl import SFTConfig

    t = cfg.train
    kwargs = dict(
        output_dir=str(out / "checkpoints"),
        learning_rate=t.learning_rate, num_train_epochs=t.num_train_epochs,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_length,
        # Packing (BFD) and padding-free batches are done by distillkit.train.data (TRL's own packing
        # drops the soft-label columns), so TRL's flags stay off.
        packing=False, padding_free=False,
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16, seed=t.seed, data_seed=t.seed, save_steps=t.save_steps, logging_steps=t.logging_steps,
        report_to=t.report_to, save_strategy="steps", logging_strategy="steps",
        # Our dataset is tokenized (with soft labels) and packed by distillkit.train.data.
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, disable_tqdm=True,
    )
    kwargs.update(t.sft_args)
    return SFTConfig(**kwargs)


def _peak_memory_bytes() -> dict:
    import resource

    torch = require("torch", "train")
    out = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        out["gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


@dataclass
class Prepared:
    """What the train stage has before `trainer.train()`: the student, its data and, for live KD, the teacher."""

    records: list
    init: dict
    model: Any
    tokenizer: Any
    dataset: Any
    data_info: dict
    bf16: bool
    mixture: Any = None
    teacher: Any = None
    special_map: Any = None
    """The teacher->student special-id map when the student keeps its own tokens (`train.student.tokenizer: map`)."""


@dataclass
class Fitted:
    """What `trainer.train()` left: its result, where it resumed from, and the wall time of training."""

    result: Any
    resume_from: Path | None
    tokens_before: int
    train_seconds: float


def run_train(cfg: RecipeConfig, overwrite: bool = False, callbacks: list | None = None) -> Manifest:
    """Train the student on the kept records; returns the train manifest.

    Phases: open the stage folder (or return its finished manifest), prepare the student and its data,
    build the trainer, fit (resuming an interrupted run of this config), save, write the manifest.
    With `train.accelerate_config` or `train.num_processes > 1` the work is relaunched in that many
    processes through `accelerate launch` (see `distillkit.train.launch`). `callbacks` are extra
    `transformers.TrainerCallback`s (tests use one to interrupt a run).
    """
    from distillkit.train.launch import in_distributed_child, launch, wants_launch

    if wants_launch(cfg.train) and not in_distributed_child():
        return launch(cfg, overwrite=overwrite)
    torch = require("torch", "train")
    require("trl", "train")
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    stage = open_stage(cfg, state, overwrite)
    if stage.is_complete() and not overwrite:
        log.info("train: %s is complete for this config; nothing to do", stage.folder)
        return stage.manifest()
    t0 = time.time()
    prepared = prepare_training(cfg, state)
    trainer = make_trainer(cfg, prepared, callbacks)
    with operation(f"train: training, checkpoints in {stage.folder}", writes_to=stage.folder):
        fitted = fit(cfg, trainer, t0)
    with operation(f"train: saving the student to {stage.folder / 'model'}", writes_to=stage.folder):
        files = save_student(cfg, trainer, prepared.tokenizer, state)
    return write_manifest(cfg, stage, state, prepared, trainer, fitted, files)


def open_stage(cfg: RecipeConfig, state, overwrite: bool) -> StageOutput:
    """The train folder's StageOutput, begun (on the main process) unless a finished output of this config is there."""
    t = cfg.train
    out = cfg.stage_dir("train")
    if t.sources:
        from distillkit.data.sources import source_input

        inputs = dict(source_input(s, cfg) for s in t.sources)
    else:
        src = input_dir(cfg)
        upstream = read_manifest(src)
        inputs = {str(src): upstream.config_hash if upstream else "unknown"}
    stage = StageOutput(out, "train", train_config_hash(cfg), config=t.model_dump(mode="json"), inputs=inputs)
    if not overwrite and stage.is_complete():
        return stage
    if state.is_main_process:
        stage.begin(overwrite=overwrite)
        if overwrite or not t.resume:  # a fresh run: never mix with an earlier run's checkpoints or model
            for name in ("checkpoints", "adapter", "model", *(["student_init"] if overwrite else [])):
                shutil.rmtree(out / name, ignore_errors=True)
    state.wait_for_everyone()
    return stage


def prepare_training(cfg: RecipeConfig, state) -> Prepared:
    """Read the training data, derive and load the student (and a live teacher), tokenize the examples."""
    import torch

    from distillkit.student.build import build_student_init, load_student, resolve_bf16

    t = cfg.train
    out = cfg.stage_dir("train")
    records, loaded = _read_training_data(cfg)
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # fp32 denormals make CPU matmuls ~10x slower (ENVIRONMENT.md)
    with state.main_process_first():
        init = build_student_init(t.student, out / "student_init", records=records, teacher=cfg.label_teacher.model)
    model, tokenizer = load_student(t, out / "student_init")
    check_student_tokenizer(tokenizer, model.config)
    special_map = _map_teacher_specials(cfg, init, tokenizer)
    mixture = None
    if t.sources:
        mixture = _draw_mixture(cfg, loaded, tokenizer)
        records = mixture.examples
    bf16 = resolve_bf16(t.bf16)
    teacher = (load_live_teacher(cfg, tokenizer, bf16, special_map) if t.kd.enabled and t.kd.teacher_probs == "live"
               else None)
    dataset, data_info = _tokenize_examples(cfg, state, records, tokenizer, special_map)
    return Prepared(records=records, init=init, model=model, tokenizer=tokenizer, dataset=dataset,
                    data_info=data_info, bf16=bf16, mixture=mixture, teacher=teacher, special_map=special_map)


def _read_training_data(cfg: RecipeConfig):
    """(the kept records of the input stage, None) read shard by shard, or (None, the loaded `train.sources`) for a
    mixture; both read and checked before the model loads."""
    records = loaded = None
    if cfg.train.sources:
        from distillkit.data.sources import load_sources

        loaded = load_sources(cfg)  # reads every source and checks its columns before the model loads
    else:
        src = input_dir(cfg)
        records = StageRecords(src)  # read shard by shard: soft labels of 16-32k-token traces never all in memory
        if len(records) == 0:
            raise DistillkitError(f"{src} holds no kept records to train on; check the filter funnel "
                                  "(distillkit inspect) or loosen the filters")
    return records, loaded


def _map_teacher_specials(cfg: RecipeConfig, init: dict, tokenizer):
    """The labelling teacher's special ids moved onto the student's, when the student kept its own tokens; else None."""
    if "special_map" not in init:
        return None
    # the student kept its tokens: the labelling teacher's special ids move onto them
    from distillkit.models import load_tokenizer_and_config
    from distillkit.student.special_map import build_special_map

    special_map = build_special_map(load_tokenizer_and_config(cfg.label_teacher.model)[0], tokenizer,
                                    cfg.label_teacher.model, cfg.train.student.model)
    others = dict.fromkeys(t.model for t in cfg.generate.teachers if t.model != cfg.label_teacher.model)
    for model in others:  # one map serves every teacher's records
        other = build_special_map(load_tokenizer_and_config(model)[0], tokenizer, model, cfg.train.student.model)
        if not special_map.same_mapping(other):
            raise DistillkitError(
                f"train.student.tokenizer: map moves the teacher's special ids onto the student's with one map, and "
                f"generate.teachers {cfg.label_teacher.model} and {model} have different special tokens; train on one "
                "teacher family per run (or use train.student.tokenizer: teacher)")
    log.info("train: %s", special_map.summary())
    return special_map


def _draw_mixture(cfg: RecipeConfig, loaded, tokenizer):
    """The training mixture drawn from the loaded `train.sources`, its composition logged."""
    from distillkit.train.mixture import build_mixture

    t = cfg.train
    mixture = build_mixture(loaded, t.seed, tokenizer, t.mixture_size)
    for name, part in mixture.composition.items():
        log.info("train: mixture %s (%s): %d samples of %d, %.1f%% of tokens", name, part["kind"],
                 part["samples"], part["available"], 100 * part["token_share"])
    return mixture


def _tokenize_examples(cfg: RecipeConfig, state, records, tokenizer, special_map):
    """(dataset, data_info) of `build_train_dataset` for this process (the main process first, so the others find
    its caches), records read through `special_map` when there is one."""
    from distillkit.train.data import build_train_dataset

    t = cfg.train
    teacher_tokenizer = teachers = None
    if cfg.generate.teachers:  # each record's labels are its own teacher's: its `teacher` column names the model
        from distillkit.train.teachers import LabelTeachers

        teachers = LabelTeachers(cfg.label_teacher.model, cross_tokenizer=t.kd.enabled and t.kd.cross_tokenizer)
    elif t.kd.enabled and t.kd.cross_tokenizer:  # the soft labels' ids are the labelling teacher's
        from distillkit.models import load_tokenizer_and_config

        teacher_tokenizer = load_tokenizer_and_config(cfg.label_teacher.model)[0]
    if special_map is not None:
        from distillkit.train.data import MappedRecords

        records_in = MappedRecords(records, special_map)
    else:
        records_in = records
    with state.main_process_first():
        dataset, data_info = build_train_dataset(records_in, tokenizer, t.max_length, use_kd=t.kd.enabled,
                                                 packing=t.packing, seed=t.seed,
                                                 require_topk=t.kd.teacher_probs in ("topk_renorm", "topk_tail",
                                                                                     "sampled"),
                                                 cache_dir=cfg.stage_dir("train") / ".cache" / f"examples-{state.process_index}",
                                                 teacher_tokenizer=teacher_tokenizer,
                                                 teacher_probs=t.kd.teacher_probs if t.kd.enabled else None,
                                                 teachers=teachers)
    if special_map is not None:
        data_info["special_map"] = {"records_unmatched": data_info.pop("special_map_unmatched", 0),
                                    "summary": special_map.summary()}
    return dataset, data_info


def make_trainer(cfg: RecipeConfig, p: Prepared, callbacks: list | None = None):
    """The TRL trainer for the recipe (off-policy DistillTrainer, or an on-policy one), with the loss-curve callback."""
    from distillkit.train.trainer import LossCurveCallback

    args = sft_config(cfg, cfg.stage_dir("train"), p.bf16)
    # student_init already made EOS the template's end of turn; TRL's own option for it checks the
    # token exists and keeps model and generation config on it.
    args.eos_token = p.tokenizer.eos_token
    if cfg.train.on_policy.enabled and cfg.train.kd.teacher_probs == "served":
        from distillkit.train.served import build_served_trainer

        trainer = build_served_trainer(cfg, p.model, p.tokenizer, p.records, args, p.special_map)
    elif cfg.train.on_policy.enabled:
        if p.special_map is not None:
            raise DistillkitError("train.on_policy with a live teacher (TRL's trainers) compares the teacher's and the "
                                  "student's logits id by id, and this student keeps its own special tokens "
                                  "(train.student.tokenizer: map). Use train.kd.teacher_probs: served (its top-k is "
                                  "mapped onto the student's ids), or train.student.tokenizer: teacher")
        trainer = build_on_policy_trainer(cfg, p.model, p.tokenizer, p.records, args)
    else:
        trainer = build_trainer(cfg, p.model, p.tokenizer, p.dataset, args, p.teacher, callbacks, p.special_map)
    trainer.add_callback(LossCurveCallback())
    for cb in callbacks or []:
        if cb not in trainer.callback_handler.callbacks:
            trainer.add_callback(cb)
    return trainer


def fit(cfg: RecipeConfig, trainer, t0: float) -> Fitted:
    """trainer.train(), from the last checkpoint of an interrupted run of this config when train.resume."""
    import json

    from distillkit.train.trainer import LossCurveCallback

    resume_from = last_checkpoint(cfg.stage_dir("train") / "checkpoints") if cfg.train.resume else None
    tokens_before = 0
    if resume_from is not None:
        log.info("train: resuming an interrupted run of this config from %s (train.resume=false starts over)",
                 resume_from)
        tokens_before = json.loads((resume_from / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        if hasattr(trainer, "close_teacher"):  # a served teacher's connection (and a server distillkit started)
            trainer.close_teacher()
    curves = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, LossCurveCallback))
    return Fitted(result=result, resume_from=resume_from, tokens_before=int(tokens_before),
                  train_seconds=curves.train_seconds or (time.time() - t0))


def save_student(cfg: RecipeConfig, trainer, tokenizer, state) -> dict[str, str]:
    """Full weights to model/, or the adapter to adapter/ (and merged into student_init as model/)."""
    from distillkit.student.build import save_merged

    t, out = cfg.train, cfg.stage_dir("train")
    files = {}
    if getattr(trainer, "is_fsdp_enabled", False):
        return _save_sharded_student(cfg, trainer, tokenizer, state)
    if state.is_main_process:
        if t.method == "full":
            trainer.save_model(str(out / "model"))
            tokenizer.save_pretrained(out / "model")
            files["model"] = "model"
        else:
            trainer.model.save_pretrained(out / "adapter")
            tokenizer.save_pretrained(out / "adapter")
            files["adapter"] = "adapter"
            if t.save_merged:
                save_merged(out / "student_init", out / "adapter", out / "model")
                files["model"] = "model"
    state.wait_for_everyone()
    return files


def _save_sharded_student(cfg: RecipeConfig, trainer, tokenizer, state) -> dict[str, str]:
    """Under FSDP every rank holds a shard: the full state dict is gathered collectively (every rank calls
    save_model; rank 0 writes). A rank-0-only save would deadlock (FULL_STATE_DICT) or write no weights (SHARDED)."""
    from distillkit.student.build import save_merged

    t, out = cfg.train, cfg.stage_dir("train")
    trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    folder = out / ("model" if t.method == "full" else "adapter")
    trainer.save_model(str(folder))
    files = {"model": "model"} if t.method == "full" else {"adapter": "adapter"}
    if state.is_main_process:
        tokenizer.save_pretrained(folder)
        if t.method != "full" and t.save_merged:
            save_merged(out / "student_init", out / "adapter", out / "model")
            files["model"] = "model"
    state.wait_for_everyone()
    return files


def write_manifest(cfg: RecipeConfig, stage: StageOutput, state, p: Prepared, trainer, fitted: Fitted,
                   files: dict[str, str]) -> Manifest:
    """The train manifest: token counts and speed, the loss curve, memory, data and student_init facts."""
    t = cfg.train
    history = trainer.state.log_history
    tokens_seen = int(trainer.state.num_input_tokens_seen)
    new_tokens = tokens_seen - fitted.tokens_before
    curve = [{k: row[k] for k in ("step", "loss", "ce", "kl", "kl_sampled", "learning_rate", "num_input_tokens_seen") if k in row}
             for row in history if "loss" in row]
    seconds = fitted.train_seconds
    stats = TrainStats(
        tokens_seen=tokens_seen,
        tokens_per_s=round(new_tokens / seconds, 2) if seconds > 0 else None,
        train_seconds=round(seconds, 3),
        global_steps=trainer.state.global_step,
        resumed_from=fitted.resume_from.name if fitted.resume_from else None,
        final_train_loss=round(float(fitted.result.training_loss), 6),
        loss_curve=curve,
        peak_memory=_peak_memory_bytes(),
        data=p.data_info,
        mixture=p.mixture.composition if p.mixture else None,
        student_init={k: p.init[k] for k in ("num_layers", "kept_layers", "num_params", "tokenizer_changes",
                                             "adopted_rows", "context", "layer_choice", "special_map") if k in p.init},
        method=t.method, bf16=p.bf16, kd=t.kd.model_dump(mode="json") if t.kd.enabled else None,
        num_processes=state.num_processes,
        distributed=describe_distributed(trainer),
        trainable_params=sum(x.numel() for x in trainer.model.parameters() if x.requires_grad),
        files=files,
    ).dump()
    counts = {"records": len(p.records), "examples": p.data_info["num_examples"], "tokens_seen": tokens_seen,
              "steps": trainer.state.global_step}
    if not state.is_main_process:
        return Manifest(stage="train", config_hash=stage.config_hash, counts=counts, stats=stats)
    return stage.finish(counts=counts, stats=stats, timings={"train_s": round(seconds, 3)},
                        versions=("distillkit", "datasets", "torch", "transformers", "trl", "peft", "accelerate"))


def check_student_tokenizer(tokenizer, config) -> None:
    """Preflight on the *fixed* student tokenizer (after student_init's fix-ups): stop on fatal problems."""
    from distillkit.tokenizer_checks import check_tokenizer, raise_on_fatal

    findings = check_tokenizer(tokenizer, config, subject="student (student_init)", is_trained=True)
    for finding in findings:
        if finding.severity == "warning":
            log.warning("preflight: %s", finding)
    raise_on_fatal(findings)


# ----------------------------------------------------------------------------------------- trainers


def build_trainer(cfg: RecipeConfig, model, tokenizer, dataset, args, teacher=None, callbacks=None, special_map=None):
    """The off-policy trainer: SFT on the traces plus the chunked soft-label KD term when `kd.enabled`
    (`special_map`: a live teacher's ids are moved onto the student's, see `distillkit.student.special_map`)."""
    from distillkit.train.batches import DistillCollator
    from distillkit.train.trainer import DistillTrainer

    collator = DistillCollator(pad_token_id=tokenizer.pad_token_id, padding_free=cfg.train.packing)
    return DistillTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          data_collator=collator, kd=cfg.train.kd, teacher=teacher, callbacks=callbacks,
                          teacher_map=special_map if teacher is not None else None)


def load_live_teacher(cfg: RecipeConfig, student_tokenizer, bf16: bool, special_map=None):
    """The generate stage's teacher, loaded for `kd.teacher_probs: live` (must share the student's
    vocabulary, or with `special_map` its BPE), in bf16 when the student trains in bf16, else in float32."""
    torch = require("torch", "train")
    transformers = require("transformers", "train")
    from distillkit.models import resolve_model

    path = resolve_model(cfg.generate.teacher.model)
    if special_map is None:
        check_shared_vocabulary(transformers.AutoTokenizer.from_pretrained(path), student_tokenizer,
                                cfg.generate.teacher.model)
    dtype = torch.bfloat16 if bf16 else torch.float32
    # Under FSDP with fsdp_cpu_ram_efficient_loading, from_pretrained fills only rank 0's weights and leaves the
    # others to FSDP's broadcast, which the teacher (not wrapped by FSDP) never gets: every rank loads it whole.
    saved = os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()  # trainer places it
    finally:
        if saved is not None:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = saved


__all__ = ["run_train", "input_dir", "train_config_hash", "last_checkpoint", "sft_config", "build_trainer"]
