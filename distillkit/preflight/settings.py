"""Checks of recipe settings that load no tokenizer: loggers installed, the accelerate config runnable here, soft
labels stored of the kind KD reads, evaluation tasks that exist and can be read."""

from __future__ import annotations

from typing import Iterable, Optional

from distillkit.errors import DistillkitError
from distillkit.tokenizer_checks import Finding


REPORT_TO_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "neptune": "neptune"}


def check_report_to(report_to: Iterable[str]) -> Optional[Finding]:
    """`train.report_to` names loggers transformers knows and that are installed (else the Trainer fails
    only after the earlier stages ran). None when nothing is asked for."""
    names = [n for n in report_to if n != "none"]
    if not names:
        return None
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    unknown = [n for n in names if n != "all" and n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        return Finding("report_to", "error", f"train.report_to names {unknown}, which transformers does not know.",
                       f"use some of {sorted(INTEGRATION_TO_CALLBACK)} (or none)")
    available = set(get_available_reporting_integrations())
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        pkgs = " ".join(REPORT_TO_PACKAGES.get(n, n) for n in missing)
        return Finding("report_to", "error", f"train.report_to asks for {missing}, which {'is' if len(missing) == 1 else 'are'} "
                       "not installed.", f"pip install {pkgs}, or remove {'it' if len(missing) == 1 else 'them'} "
                       "from train.report_to")
    return Finding("report_to", "ok", f"train.report_to: {', '.join(names)} installed.")


def check_distributed(train_cfg) -> list[Finding]:
    """An accelerate config that cannot run as it says here (DeepSpeed missing or without a GPU, FSDP1 on CPU) stops
    now: accelerate would otherwise fall back to plain DDP, or fail after the data is prepared."""
    if not train_cfg.accelerate_config:
        return []
    import torch

    from distillkit.train.launch import distributed_problems

    try:
        problems = distributed_problems(train_cfg, has_gpu=torch.cuda.is_available())
    except DistillkitError as e:  # a missing or unreadable config file
        problems = [(str(e), "fix train.accelerate_config")]
    return [Finding("distributed", "error", problem, fix, "train") for problem, fix in problems]


def check_soft_labels(cfg, stages: list[str]) -> Optional[Finding]:
    """KD on stored soft labels needs this run's generation (or scoring) to store them, of the kind the loss reads
    (the train stage refuses records without them, or of the other kind, after generation). None when it does not
    apply."""
    t = cfg.train
    stored = ("topk_renorm", "topk_tail", "sampled")
    if not (t.kd.enabled and t.kd.teacher_probs in stored and not t.sources
            and ("generate" in stages or "score" in stages)):
        return None
    want = "sampled" if t.kd.teacher_probs == "sampled" else "topk"
    if "score" in cfg.stages:
        s = cfg.score
        kind, what = s.soft_labels, (f"{s.soft_label_samples} sampled draws per token" if s.soft_labels == "sampled"
                                     else f"top-{s.topk} logprobs")
        where, key = f"the score stage adds {s.teacher.model}'s {what}", "score.soft_labels"
    else:
        g = cfg.generate.sampling
        if g.soft_labels == "topk" and g.topk_logprobs == 0:
            return Finding("soft_labels", "error", "train.kd is enabled on stored soft labels (kd.teacher_probs="
                           f"{t.kd.teacher_probs}) but generate.sampling.topk_logprobs is 0: the traces would carry "
                           "none.", "set generate.sampling.topk_logprobs: 20, or add the `score` stage, or "
                           "train.kd.teacher_probs: live, or train.kd.enabled: false", "train")
        kind, what = g.soft_labels, (f"{g.soft_label_samples} sampled draws per token" if g.soft_labels == "sampled"
                                     else f"top-{g.topk_logprobs} logprobs")
        where, key = f"the teacher's {what} are stored", "generate.sampling.soft_labels"
    if kind != want:
        return Finding("soft_labels", "error", f"{where}, and train.kd.teacher_probs={t.kd.teacher_probs} reads "
                       f"{'sampled' if want == 'sampled' else 'top-k'} labels.",
                       f"set {key}: {want}, or train.kd.teacher_probs: "
                       f"{'sampled' if kind == 'sampled' else 'topk_tail'}", "train")
    return Finding("soft_labels", "ok", f"{where} for train.kd.", subject="train")


def check_eval_tasks(ecfg) -> list[Finding]:
    """evaluate.tasks: every name exists and its dataset is readable (gated access, local files, columns),
    read from the task YAMLs without building a task or loading a model (`distillkit.evaluate.task_checks`)."""
    try:
        from distillkit.evaluate.task_checks import check_tasks
    except ImportError:  # lm-eval not installed: the evaluate stage says which extra to install
        return []
    try:
        results = check_tasks(list(ecfg.tasks), ecfg.include_path)
    except DistillkitError as e:
        return [Finding("task_name", "error", str(e), "fix evaluate.include_path", "evaluate")]
    return [Finding(check, severity, message, fix, "evaluate") for check, severity, message, fix in results]
