"""Each stage's config hash (its own config and every upstream stage's): a finished stage whose manifest records
the hash of the current recipe is done and is skipped."""

from __future__ import annotations

from pathlib import Path

from distillkit.config import SOFT_LABEL_SAMPLES, STAGES, PrescreenConfig, RecipeConfig, ResampleConfig
from distillkit.records import content_digest, stable_hash


# Keys that change how a stage runs but not what it produces: excluded from the hash, so that e.g.
# `train.resume=true` continues the same run instead of being refused as a different config.
_NOT_HASHED = {"generate": {"teachers_side_by_side"}, "filter": {"num_workers", "executor", "warn_cannot_judge"},
               "train": {"resume", "report_to", "logging_steps"}}


def _default_server() -> dict:
    from distillkit.config import ServedTeacherConfig

    return ServedTeacherConfig().model_dump(mode="json")


# Keys added after runs were made: hashed only when set away from their default, so a finished run of a
# recipe that does not use them keeps its hash (and is not refused as "a different config") after an upgrade.
_ADDED_LATER = [
    ("generate", ("teacher", "openai", "serve"), lambda: False),
    ("train", ("kd", "teacher_server"), _default_server),
    ("filter", ("verifiers", "*", "on_cannot_judge"), lambda: None),
    ("generate", ("prescreen",), lambda: PrescreenConfig().model_dump(mode="json")),
    ("generate", ("resample",), lambda: ResampleConfig().model_dump(mode="json")),
    ("filter", ("selection", "bins"), lambda: None),
    ("filter", ("selection", "bin_shares"), lambda: None),
    ("filter", ("selection", "seed"), lambda: 0),
    ("train", ("kd", "cross_tokenizer"), lambda: False),
    # packed-v1 became the default: a finished fp16 run keeps its hash, and a resumed one writes its remaining
    # shards packed (readers take both formats shard by shard)
    ("generate", ("soft_label_format",), lambda: "packed-v1"),
    ("score", ("soft_label_format",), lambda: "packed-v1"),
    # sampled soft labels (issue 33): top-k runs keep their hashes
    ("generate", ("sampling", "soft_labels"), lambda: "topk"),
    ("generate", ("sampling", "soft_label_samples"), lambda: SOFT_LABEL_SAMPLES),
    ("score", ("soft_labels",), lambda: "topk"),
    ("score", ("soft_label_samples",), lambda: SOFT_LABEL_SAMPLES),
    ("score", ("soft_label_temperature",), lambda: 1.0),
    # several teachers (issue 34): one-teacher runs keep their hashes
    ("generate", ("teachers",), lambda: []),
    ("filter", ("source_verifiers",), lambda: {}),
    ("score", ("per_teacher",), lambda: False),
    ("train", ("kd", "teacher_servers"), lambda: {}),
]


def stage_config_hash(cfg: RecipeConfig, stage: str) -> str:
    """Hash of a stage's config and of every upstream stage's config (a change upstream reruns it)."""
    # `score` only counts where the recipe runs it: adding the stage to distillkit did not rehash other runs.
    upto = [s for s in STAGES[: STAGES.index(stage) + 1] if s != "score" or "score" in cfg.stages or s == stage]
    content = {s: getattr(cfg, s).model_dump(mode="json", exclude=_NOT_HASHED.get(s)) for s in upto}
    for s, path, default in _ADDED_LATER:
        parents = [content.get(s)]
        for key in path[:-1]:  # "*": every element of a list
            parents = [x for p in parents for x in (p if key == "*" and isinstance(p, list)
                                                     else [p.get(key)] if isinstance(p, dict) else [])]
        for parent in parents:
            if isinstance(parent, dict) and parent.get(path[-1]) == default():
                del parent[path[-1]]
    gen = cfg.generate
    if gen.resample.rounds or gen.prescreen.enabled:
        # which prompts are sampled, and how often, depends on the verifiers' verdicts (and the screening student)
        content["generate_verifiers"] = [v.model_dump(mode="json") for v in cfg.filter.verifiers]
        if cfg.filter.source_verifiers:  # each prompt is judged by its source's chain
            content["generate_source_verifiers"] = {src: [v.model_dump(mode="json") for v in specs]
                                                    for src, specs in cfg.filter.source_verifiers.items()}
        if gen.prescreen.enabled and gen.prescreen.model is None:
            content["prescreen_student"] = cfg.train.student.model_dump(mode="json")
    if "train" in upto and cfg.train.sources:
        # the training data, not only its path: an edited local file retrains (stage outputs and Hub datasets
        # are named by their config; a missing path fails later with a clear error)
        content["train_source_content"] = [None if s.is_stage else content_digest(s.path) for s in cfg.train.sources]
    if "score" in upto and (path := Path(cfg.score.input).expanduser()).is_file():
        content["score_input_content"] = content_digest(path)  # an edited input file is scored again
    return stable_hash(content | {"seed": cfg.seed})
