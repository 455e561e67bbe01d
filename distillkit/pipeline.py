"""The pipeline: stage name -> stage function, and `run_pipeline` that skips stages already done (their manifest
records the current config hash, `distillkit.stage_hash`).

Each stage is a plain function `run_<stage>(cfg, overwrite=False, **kw) -> Manifest` in
`distillkit/<stage>/stage.py`, imported only when it runs (torch, vllm and lm_eval stay unloaded
for `--help` and `validate`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from distillkit.config import STAGES, RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.faults import operation
from distillkit.records import Manifest, read_manifest
from distillkit.stage_hash import stage_config_hash

log = logging.getLogger(__name__)

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
        from distillkit.filter.funnel import check_kept

        check_kept(manifest)
