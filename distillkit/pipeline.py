"""The pipeline: stage name -> stage function, each stage's config hash, and `run_pipeline` that skips
stages already done.

Each stage is a plain function `run_<stage>(cfg, overwrite=False, **kw) -> Manifest` in
`distillkit/<stage>/stage.py`, imported only when it runs (torch, vllm and lm_eval stay unloaded
for `--help` and `validate`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from distillkit.config import STAGES, PrescreenConfig, RecipeConfig, ResampleConfig
from distillkit.errors import DistillkitError
from distillkit.faults import operation
from distillkit.records import Manifest, content_digest, read_manifest, stable_hash

log = logging.getLogger(__name__)

# Keys that change how a stage runs but not what it produces: excluded from the hash, so that e.g.
# `train.resume=true` continues the same run instead of being refused as a different config.
_NOT_HASHED = {"filter": {"num_workers", "executor", "warn_cannot_judge"}, "train": {"resume", "report_to", "logging_steps"}}


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
        if gen.prescreen.enabled and gen.prescreen.model is None:
            content["prescreen_student"] = cfg.train.student.model_dump(mode="json")
    if "train" in upto and cfg.train.sources:
        # the training data, not only its path: an edited local file retrains (stage outputs and Hub datasets
        # are named by their config; a missing path fails later with a clear error)
        content["train_source_content"] = [None if s.is_stage else content_digest(s.path) for s in cfg.train.sources]
    if "score" in upto and (path := Path(cfg.score.input).expanduser()).is_file():
        content["score_input_content"] = content_digest(path)  # an edited input file is scored again
    return stable_hash(content | {"seed": cfg.seed})


STAGE_FUNCTIONS = {
    "generate": "distillkit.generate.stage:run_generate",
    "filter": "distillkit.filter.stage:run_filter",
    "score": "distillkit.score.stage:run_score",
    "train": "distillkit.train.stage:run_train",
    "evaluate": "distillkit.evaluate.stage:run_evaluate",
    "publish": "distillkit.publish.stage:run_publish",
}


def stage_function(stage: str) -> Callable[..., Manifest]:
    if stage not in STAGE_FUNCTIONS:
        raise DistillkitError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    module, _, name = STAGE_FUNCTIONS[stage].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("distillkit"):
            raise DistillkitError(f"the {stage} stage is not available in this version of distillkit") from e
        raise
    return getattr(mod, name)


def stage_is_done(cfg: RecipeConfig, stage: str) -> bool:
    """True when the stage's folder holds a finished output of exactly this config (and upstream)."""
    manifest = read_manifest(cfg.stage_dir(stage))
    return manifest is not None and manifest.config_hash == stage_config_hash(cfg, stage)


def run_pipeline(cfg: RecipeConfig, from_stage: str | None = None, overwrite: bool = False,
                 on_stage: Callable[[str, str], None] | None = None) -> dict[str, Manifest]:
    """Run `cfg.stages` in pipeline order; a stage whose manifest matches its config hash is skipped.

    `from_stage` forces that stage and the ones after it to rerun. `on_stage(stage, status)` is
    called with status "skipped", "running", "done" or "submitted" (the CLI prints from it); a submitted
    stage (the filter on Slurm) ends the run, and rerunning continues from it once its jobs finish.
    """
    selected = [s for s in STAGES if s in cfg.stages]
    if from_stage is not None and from_stage not in selected:
        raise DistillkitError(f"--from {from_stage!r} is not among this recipe's stages {selected}")
    manifests: dict[str, Manifest] = {}
    forced = False
    for stage in selected:
        forced = forced or stage == from_stage
        if not forced and not overwrite and stage_is_done(cfg, stage):
            manifests[stage] = read_manifest(cfg.stage_dir(stage))
            if on_stage:
                on_stage(stage, "skipped")
            _check_output(stage, manifests[stage], selected)
            continue
        if on_stage:
            on_stage(stage, "running")
        from distillkit.plan import warn_if_too_big

        warn_if_too_big(cfg, stage)
        with operation(stage, writes_to=cfg.stage_dir(stage)):
            manifest = stage_function(stage)(cfg, overwrite=overwrite or forced)
        if manifest is None:  # handed to a scheduler (filter.executor.kind: slurm): later stages wait for it
            if on_stage:
                on_stage(stage, "submitted")
            break
        manifests[stage] = manifest
        if on_stage:
            on_stage(stage, "done")
        _check_output(stage, manifest, selected)
    return manifests


def _check_output(stage: str, manifest: Manifest, selected: list[str]) -> None:
    """Stop between stages when one left the next nothing to work on (a filter that kept no record)."""
    if stage == "filter" and any(s in selected for s in ("score", "train")):
        from distillkit.filter.stage import check_kept

        check_kept(manifest)
