"""A damaged file reads as a DistillkitError naming it and the fix, never as a pyarrow or json traceback.

Writers rename whole files into place, so a damaged shard or manifest means disk trouble or a copy gone wrong;
the fix names the stage that writes the folder again."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.records.files import MANIFEST, STATE


def _brief(error: BaseException) -> str:
    """The first line of an error (pyarrow appends a whole schema to some), shortened."""
    lines = str(error).strip().splitlines()
    first = lines[0].split("': ", 1)[-1] if lines and lines[0].startswith("Could not open") else ""  # the path again
    first = first or (lines[0] if lines else "")
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


def _stage_of(folder: Path) -> str | None:
    """The stage that writes `folder` (its state.json says; else its name), or None for a folder of unknown origin."""
    from distillkit.config import STAGES

    for place in (folder, folder.parent):  # the filter's rejected/ belongs to the filter
        try:
            stage = json.loads((place / STATE).read_text()).get("stage")
        except (OSError, ValueError, AttributeError):
            stage = None
        if stage in STAGES:
            return stage
        if place.name in STAGES:
            return place.name
    return None


def _rewrite_fix(path: Path) -> str:
    """How to get a good `path` (a shard) back: the stage that wrote its folder makes it again."""
    folder = path.parent
    stage = _stage_of(folder)
    if stage in ("generate", "score"):  # they resume: only missing shards are written
        manifest = folder / MANIFEST
        also = f" and {manifest} (while it is there the stage counts as finished)" if manifest.exists() else ""
        return (f"delete it{also}, then rerun `distillkit {stage}` with the same recipe, which makes that shard "
                "again; finished shards are kept. Or put back a good copy of the file")
    if stage is not None:
        return (f"rerun `distillkit {stage} --overwrite` with the same recipe to write {folder} again, "
                "or put back a good copy of the file")
    return f"put back a good copy of the file, or rerun whatever wrote {folder}"


def unreadable(path: str | os.PathLike, error: BaseException) -> BaseException:
    """What to raise for a shard that could not be read: a disk fault (permission, a missing file) as it is,
    for `faults.explain` to word; anything else (a truncated, empty or foreign file) as a DistillkitError."""
    from distillkit.faults import disk_reason

    if isinstance(error, OSError) and disk_reason(error) is not None:
        return error
    if isinstance(error, MemoryError) or type(error).__name__ == "ArrowCancelled":  # not the file's fault
        return error
    path = Path(path)
    return DistillkitError(f"{path} is not a readable Parquet file ({_brief(error)}): {_rewrite_fix(path)}")


@contextlib.contextmanager
def reading_shard(path: str | os.PathLike) -> Iterator[None]:
    """Run a read of the shard `path`; pyarrow's and the OS's errors come out as `unreadable(path, error)`."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError) as e:
        raised = unreadable(path, e)
        if raised is e:
            raise
        raise raised from e


def _check_columns(path: Path, names: list[str], wanted: Iterable[str] | None) -> None:
    missing = [c for c in wanted or () if c not in names]
    if missing:
        raise DistillkitError(f"{path} has no column {', '.join(map(repr, missing))} (it has {names}), so it is "
                              f"not a shard of this stage's records: {_rewrite_fix(path)}")
