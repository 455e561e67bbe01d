"""Prompts: load (JSONL/JSON/Parquet file, Hub dataset, builtin), validate rows, dedup, build the chat.

A malformed row (missing or empty problem, wrong type, repeated id with another problem) becomes a
`BadRow` naming the file and the row; per `prompts.on_bad_row` it is skipped and counted, or it
stops the run. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    prompt_id: str
    problem: str
    answer: str | None
    tests: str | None
    source: str
    messages: list[dict[str, str]]


@dataclass
class BadRow:
    file: str
    row: int
    """1-based: the line of a JSONL file, the row of a table."""
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}: {self.reason}"


@dataclass
class PromptSet:
    prompts: list[Prompt]
    bad_rows: list[BadRow] = field(default_factory=list)
    num_rows: int = 0
    num_duplicates: int = 0
    origin: str = ""


class BadRowError(DistillkitError):
    pass


def _norm(text: str) -> str:
    return " ".join(text.split())


def derive_prompt_id(problem: str) -> str:
    """Stable id of a prompt without one: a hash of its whitespace-normalized text."""
    return "p-" + hashlib.sha1(_norm(problem).encode()).hexdigest()[:12]


def build_messages(cfg, problem: str) -> list[dict[str, str]]:
    """The chat sent to the teacher: optional system prompt, then the templated user turn."""
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return messages + [{"role": "user", "content": cfg.render(problem)}]


def _read_rows(cfg, seed: int) -> tuple[str, list[tuple[int, Any]]]:
    """(origin name, [(1-based row number, row)]); unparsable JSON lines come back as exceptions."""
    if cfg.builtin == "arith":
        from distillkit.data.arith import make_arith_problems

        args = {"num": 300, "split": "train", "seed": seed, **cfg.builtin_args}
        try:
            rows = make_arith_problems(**args)
        except TypeError as e:
            raise DistillkitError(f"generate.prompts.builtin_args={cfg.builtin_args!r}: {e}; "
                                  "valid keys are num, split, seed, templates") from None
        return "builtin:arith", list(enumerate(rows, 1))
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DistillkitError(f"generate.prompts.path={cfg.path!r}: no such file")
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            from distillkit.data.files import read_json_rows

            return str(path), read_json_rows(path)
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return str(path), list(enumerate(pq.read_table(path).to_pylist(), 1))
        raise DistillkitError(f"generate.prompts.path={cfg.path!r}: unsupported file type {suffix!r}; "
                              "use .jsonl, .json or .parquet")
    if cfg.hub_dataset:
        import datasets

        try:
            ds = datasets.load_dataset(cfg.hub_dataset, cfg.hub_config, split=cfg.split)
        except Exception as e:  # offline, unknown name, bad config/split: one message naming the keys
            raise DistillkitError(
                f"could not load generate.prompts.hub_dataset={cfg.hub_dataset!r} (hub_config={cfg.hub_config!r}, "
                f"split={cfg.split!r}): {type(e).__name__}: {e}") from None
        return cfg.hub_dataset, list(enumerate(ds, 1))
    raise DistillkitError("generate.prompts: set one of path, hub_dataset or builtin (e.g. builtin: arith)")


def _optional_str(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{what} must be a string or a number, got {type(value).__name__}")
    return str(value)


def load_prompts(cfg, seed: int = 0) -> PromptSet:
    """Read, validate and dedup the prompts of `generate.prompts` (a PromptsConfig)."""
    origin, rows = _read_rows(cfg, seed)
    cols = cfg.columns
    default_source = Path(origin).stem if cfg.path else origin.removeprefix("builtin:")
    prompts: list[Prompt] = []
    bad: list[BadRow] = []
    seen_text: set[str] = set()
    id_to_text: dict[str, str] = {}
    duplicates = 0
    for num, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            problem = row.get(cols.problem)
            if problem is None:
                raise ValueError(f"missing column {cols.problem!r} (generate.prompts.columns.problem)")
            if not isinstance(problem, str):
                raise ValueError(f"column {cols.problem!r} must be a string, got {type(problem).__name__}")
            if not problem.strip():
                raise ValueError(f"column {cols.problem!r} is empty")
            pid = _optional_str(row.get(cols.id), f"column {cols.id!r}") if cols.id else None
            answer = _optional_str(row.get(cols.answer), f"column {cols.answer!r}") if cols.answer else None
            tests = row.get(cols.tests) if cols.tests else None
            if tests is not None and not isinstance(tests, str):
                if not isinstance(tests, (list, dict)):
                    raise ValueError(f"column {cols.tests!r} must be a JSON string or a list, got {type(tests).__name__}")
                tests = json.dumps(tests)
            source = _optional_str(row.get(cols.source), f"column {cols.source!r}") if cols.source else None
        except ValueError as e:
            bad.append(BadRow(origin, num, str(e)))
            continue
        key = _norm(problem)
        if cfg.dedup and key in seen_text:
            duplicates += 1
            continue
        seen_text.add(key)
        pid = pid or derive_prompt_id(problem)
        if pid in id_to_text and id_to_text[pid] != key:
            bad.append(BadRow(origin, num, f"id {pid!r} repeats an earlier row's id with a different problem"))
            continue
        if pid in id_to_text:  # same id and text with dedup off: keep both, distinguish the ids
            pid = f"{pid}~{num}"
        id_to_text[pid] = key
        prompts.append(Prompt(pid, problem, answer, tests, source or default_source, build_messages(cfg, problem)))
    for b in bad:
        log.warning("bad prompt row: %s", b)
    if bad and cfg.on_bad_row == "error":
        head = "\n".join(f"  - {b}" for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise BadRowError(f"{len(bad)} malformed prompt row(s) (generate.prompts.on_bad_row=error; set it to "
                          f"'skip' to skip and count them):\n{head}{more}")
    if cfg.limit is not None:
        prompts = prompts[: cfg.limit]
    if not prompts:
        raise DistillkitError(f"no usable prompts in {origin} ({len(rows)} rows, {len(bad)} malformed, "
                              f"{duplicates} duplicates)")
    return PromptSet(prompts, bad, len(rows), duplicates, origin)
