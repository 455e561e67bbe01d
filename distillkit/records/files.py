"""The files of a stage output folder (their names), written atomically, and a lock for folders several processes build.

Every file is written to a hidden temporary name in the same folder and then renamed, so a killed
process leaves either the old file, the new file, or a `.tmp-*` leftover that no reader looks at."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


MANIFEST = "manifest.json"
STATE = "state.json"
SHARD_GLOB = "shard-*.parquet"


def _naming(error: OSError, path: Path) -> OSError:
    """`error` with `path` as its filename when it has none (pyarrow's writer and fsync name no file)."""
    if error.filename is not None or error.errno is None:
        return error
    try:
        named = type(error)(error.errno, error.strerror or str(error), str(path))
    except TypeError:
        return error
    return named


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    with atomic_path(path, fsync=False) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[str]:
    """A temporary name beside `path` to write to; renamed onto `path` when the block succeeds, removed if not.

    For writers that take a file name (Parquet, Arrow) rather than bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        named = _naming(e, path)
        if named is e:
            raise
        raise named from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) held for the block: processes that build the same
    cached folder (two runs, the ranks of one training job, parallel test workers) take turns, and the
    later one finds the folder done. Advisory (fcntl), released when the process dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
