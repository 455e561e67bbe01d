"""The cache of built tokenizer folders: `cache_dir()/tokenizers/<name>-<hash of the builder version>`, each built
into a temporary folder and renamed into place, so a killed build never looks complete."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from distillkit.records import file_lock

log = logging.getLogger(__name__)

# Bump when any builder's output changes: it is part of every cache folder name, so old folders are ignored.
BUILDER_VERSION = "2"


def tokenizers_root() -> Path:
    from distillkit.models import cache_dir

    return cache_dir() / "tokenizers"


def _cache_key(name: str) -> str:
    return hashlib.sha256(f"{BUILDER_VERSION}:{name}".encode()).hexdigest()[:10]


def _build_cached(name: str, build: Callable[[Path], None]) -> Path:
    """`cache/tokenizers/<name>-<key>`, built by `build(tmp_dir)` once and renamed into place."""
    final = tokenizers_root() / f"{name}-{_cache_key(name)}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a normal readable folder
        try:
            log.info("building the %s tokenizer into %s (once)", name, final)
            build(tmp)
            os.replace(tmp, final)  # the folder appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
