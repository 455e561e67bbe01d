"""Hashes that must not depend on key order, record order or machine: configs, a seeded order of prompts, and what
a local data source holds."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from distillkit.records.manifest import read_manifest
from distillkit.records.shards import list_shards


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def seeded_rank(seed: int, prompt_id: str) -> bytes:
    """A prompt's place in a seeded random order that does not depend on record order, shards or machines
    (which prompts a share keeps: filter's difficulty bins, generate's pre-screen)."""
    return hashlib.blake2b(f"{seed}\0{prompt_id}".encode(), digest_size=8).digest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def content_digest(path: str | os.PathLike) -> str | None:
    """What a local data source's content hashes to (for stage hashes and manifests): a file's sha256 (cached
    per path, size and mtime), a stage folder's manifest hash and shard sizes; None when nothing is there."""
    path = Path(path).expanduser()
    if path.is_file():
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _DIGESTS[key] = "sha256:" + h.hexdigest()
        return _DIGESTS[key]
    if path.is_dir():
        manifest = read_manifest(path)
        shards = [(p.name, p.stat().st_size) for p in list_shards(path)]
        return f"folder:{manifest.config_hash if manifest else 'unknown'}:{shards}"
    return None
