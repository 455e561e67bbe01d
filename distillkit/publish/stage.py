"""The publish stage: prepare the model and dataset folders with their cards, and upload them.

`run_publish(cfg, dry_run=True)` writes exactly what would be uploaded to `<run>/publish/`:

    model/     the student (merged weights and/or adapter/), README.md (model card), eval/ results
    dataset/   data/train-*.parquet (kept traces), rejected/ (optional), README.md (dataset card)
    manifest.json

With `dry_run=False` those same folders are uploaded (repos created if needed), so what a dry run
shows is what a push sends. Files are hard-linked from the stage outputs where possible (no copy of
the weights); the folders are rebuilt from scratch on every call.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.publish import cards
from distillkit.records import MANIFEST, STATE, Manifest, StageOutput, atomic_write_text, list_shards, read_manifest
from distillkit.stage_hash import stage_config_hash

log = logging.getLogger(__name__)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # stage outputs are replaced atomically, never edited in place: sharing the inode is safe
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            _link_or_copy(path, dst / rel)


def _model_sources(cfg: RecipeConfig) -> dict[str, Path]:
    """{"": merged/full model folder, "adapter": adapter folder} as `publish.upload` asks."""
    train = cfg.stage_dir("train")
    merged, adapter = train / "model", train / "adapter"
    upload = cfg.publish.upload
    out: dict[str, Path] = {}
    if upload in ("merged", "both"):
        if not merged.is_dir():
            raise DistillkitError(f"publish.upload={upload!r} needs the trained model at {merged}; "
                                  "run `distillkit train` first (with train.save_merged=true for LoRA)")
        out[""] = merged
    if upload in ("adapter", "both"):
        if adapter.is_dir():
            out["adapter" if upload == "both" else ""] = adapter
        elif upload == "adapter":
            raise DistillkitError(f"publish.upload='adapter' but {adapter} does not exist (train.method="
                                  f"{cfg.train.method!r} saves no adapter); set publish.upload=merged")
        else:
            log.warning("publish.upload='both': no adapter at %s (full fine-tuning); uploading the model only", adapter)
    return out


def _point_adapter_at_hub_base(cfg: RecipeConfig, adapter_dir: Path) -> None:
    """A saved adapter names its local base folder; on the Hub it must name a Hub model."""
    path = adapter_dir / "adapter_config.json"
    if not path.exists():
        return
    base = cards.hub_id(cfg.train.student.model)
    data = json.loads(path.read_text())
    if base and cfg.train.student.keep_layers is None:
        data["base_model_name_or_path"] = base
        path.unlink()  # it may be a hard link to the train output: write a new file, not through the link
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    else:
        log.warning("the adapter's base model (%s) is not on the Hub (local or layer-pruned student); "
                    "users cannot load the adapter alone: publish the merged model (publish.upload=merged)",
                    data.get("base_model_name_or_path"))


def build_model_folder(cfg: RecipeConfig, dest: Path) -> list[str]:
    """Fill `dest` with what the model repo gets; returns its files (relative paths)."""
    for prefix, src in _model_sources(cfg).items():
        _copy_tree(src, dest / prefix if prefix else dest)
        adapter_dir = dest / prefix if prefix else dest
        if (adapter_dir / "adapter_config.json").exists():
            _point_adapter_at_hub_base(cfg, adapter_dir)
    for name in ("results.json", "comparison.md"):
        src = cfg.stage_dir("evaluate") / name
        if src.exists():
            _link_or_copy(src, dest / "eval" / name)
    results = cards.load_eval_results(cfg)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    summary = "\n".join(f"- `{f}`" for f in files if not f.startswith(("eval/",))) or "(none)"
    card = cards.render_model_card(cfg, results=results, files_summary=summary,
                                   train_manifest=read_manifest(cfg.stage_dir("train")),
                                   filter_manifest=read_manifest(cfg.stage_dir("filter")))
    expected = len(results.models["student_after"].tasks) if results and "student_after" in results.models else 0
    cards.validate_model_card(str(card), expected_eval=expected)
    atomic_write_text(dest / "README.md", str(card))
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())


def build_dataset_folder(cfg: RecipeConfig, dest: Path) -> list[str]:
    """Fill `dest` with what the dataset repo gets; returns its files (relative paths)."""
    source = cfg.stage_dir("filter") if "filter" in cfg.stages else cfg.stage_dir("generate")
    shards = list_shards(source)
    if not shards:
        raise DistillkitError(f"no traces in {source}; run `distillkit {source.name}` first")
    for i, shard in enumerate(shards):
        _link_or_copy(shard, dest / "data" / f"train-{i:05d}.parquet")
    rejected = list_shards(source / "rejected") if cfg.publish.include_rejected else []
    for i, shard in enumerate(rejected):
        _link_or_copy(shard, dest / "rejected" / f"train-{i:05d}.parquet")
    card = cards.render_dataset_card(cfg, read_manifest(cfg.stage_dir("generate")), read_manifest(cfg.stage_dir("filter")),
                                     has_rejected=bool(rejected))
    cards.validate_dataset_card(str(card), folder=dest)
    atomic_write_text(dest / "README.md", str(card))
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())


def run_publish(cfg: RecipeConfig, overwrite: bool = False, dry_run: bool = True) -> Manifest:
    """Write the model and dataset folders with their cards; upload them unless `dry_run`.

    A dry run needs no repo ids (cards then use placeholders) and no token. A push needs
    `publish.model_repo` and/or `publish.dataset_repo`, and uploads the folders it has just written.
    """
    p = cfg.publish
    folder = cfg.stage_dir("publish")
    if not dry_run and not (p.model_repo or p.dataset_repo):
        raise DistillkitError("nothing to push: set publish.model_repo and/or publish.dataset_repo "
                              "(e.g. publish.model_repo=you/qwen-1.5b-r1-distill), or use --dry-run")
    # Everything here is derived from other stages: rebuild it whole every time.
    for sub in ("model", "dataset"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    for name in (MANIFEST, STATE):
        (folder / name).unlink(missing_ok=True)
    out = StageOutput(folder, "publish", stage_config_hash(cfg, "publish"),
                      config={**p.model_dump(mode="json"), "dry_run": dry_run})
    out.begin()

    targets: dict[str, tuple[Path, list[str]]] = {}
    has_model = (cfg.stage_dir("train") / "model").is_dir() or (cfg.stage_dir("train") / "adapter").is_dir()
    if p.model_repo or (dry_run and has_model):
        targets["model"] = (folder / "model", build_model_folder(cfg, folder / "model"))
    if p.dataset_repo or dry_run:
        targets["dataset"] = (folder / "dataset", build_dataset_folder(cfg, folder / "dataset"))

    uploaded: dict[str, str] = {}
    if not dry_run:
        from distillkit.publish.hub import find_token, upload_folder

        token = find_token()
        if token is None:
            raise DistillkitError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
        for kind, repo_id in (("model", p.model_repo), ("dataset", p.dataset_repo)):
            if repo_id and kind in targets:
                uploaded[kind] = upload_folder(targets[kind][0], repo_id, kind, p.private, token,
                                               commit_message=f"distillkit: {cfg.name} {kind}")
        del token
    counts = {f"{kind}_files": len(files) for kind, (_, files) in targets.items()}
    stats = {"dry_run": dry_run, "model_repo": p.model_repo, "dataset_repo": p.dataset_repo,
             "files": {kind: files for kind, (_, files) in targets.items()}, "uploaded": uploaded}
    log.info("publish: %s %s", "prepared (dry run)" if dry_run else "uploaded", ", ".join(targets) or "nothing")
    return out.finish(counts=counts, stats=stats, versions=("distillkit", "huggingface_hub"))
