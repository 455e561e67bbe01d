"""Reading local JSON data files (prompt sets, chat datasets): one reader for every stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillkit.errors import DistillkitError


def read_json_rows(path: Path) -> list[tuple[int, Any]]:
    """[(1-based line or item number, row)] of a `.jsonl` file or a `.json` list (or {"data": [...]}).

    A JSONL line that does not parse comes back as a ValueError in place of its row, so the caller
    decides whether one bad line is skipped and counted or fatal. Blank lines are skipped.
    """
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DistillkitError(f"{path}: expected a JSON list of objects (or {{\"data\": [...]}})")
        return list(enumerate(data, 1))
    out: list[tuple[int, Any]] = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                out.append((i, ValueError(f"invalid JSON ({e.msg} at column {e.colno})")))
    return out
