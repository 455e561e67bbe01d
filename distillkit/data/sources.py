"""Record sources (a stage's output, a local JSONL/JSON/Parquet file or folder, a Hub dataset) read as training
records: `train.sources` for the train stage's mixture, `score.input` for the score stage.

Two row formats are read. Trace records (a `stage:` path, or rows holding the record columns
`messages`, `prefill` and `completion` when no `columns` mapping is given) are used as they are, with
their token ids and soft labels. Chat rows are turned into records: a `messages` column whose last
turn is the assistant's (earlier turns are the prompt), or `prompt`/`response` text columns. They
carry no soft labels: with `train.kd` they train on cross-entropy only.

A non-reasoning answer is trained as the student should produce it when it answers directly:
after an empty reasoning block (`reasoning_format: empty`, R1-distill students' habit) or alone
(`none`). Either way the loss covers the whole assistant turn, so the student learns to skip
reasoning on such prompts rather than being taught a reasoning block it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillkit.config import MixtureSourceConfig, RecipeConfig
from distillkit.errors import DistillkitError


TRACE_COLUMNS = ("messages", "prefill", "completion")
CLOSE_TAG = "</think>"


# ----------------------------------------------------------------------------------------- rows


def column_names(rows) -> list[str]:
    """Columns of loaded rows: a `datasets.Dataset`'s, or every key seen in a list of dicts."""
    if hasattr(rows, "column_names"):
        return list(rows.column_names)
    return list(dict.fromkeys(k for row in rows for k in row))


def is_trace(source: MixtureSourceConfig, columns: Sequence[str]) -> bool:
    """Whether rows are distillkit trace records (used as they are) rather than chat rows."""
    if source.is_stage:
        return True
    return "columns" not in source.model_fields_set and all(c in columns for c in TRACE_COLUMNS)


def check_columns(source: MixtureSourceConfig, columns: Sequence[str], index: int | None = None) -> None:
    """Raise a DistillkitError naming the source and its missing columns (and which columns it has)."""
    needed = list(TRACE_COLUMNS) if is_trace(source, columns) else source.columns.required
    missing = [c for c in needed if c not in columns]
    if missing:
        where = f"train.sources[{index}] " if index is not None else "source "
        hint = ("it is not a distillkit stage output" if source.is_stage else
                "set train.sources[].columns to the chat column (messages) or to the prompt and response columns")
        raise DistillkitError(f"{where}{source.label!r} ({source.path}) lacks the column(s) {missing}; it has "
                              f"{sorted(columns)}; {hint}")


def _row_error(source: MixtureSourceConfig, row: int, what: str) -> DistillkitError:
    return DistillkitError(f"source {source.label!r} ({source.path}), row {row}: {what}")


def _text(source: MixtureSourceConfig, row: int, column: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _row_error(source, row, f"column {column!r} holds {type(value).__name__}, expected text")
    return value


def chat_to_record(source: MixtureSourceConfig, row: dict, index: int) -> dict:
    """A chat row -> a training record (no token ids, no soft labels); `index` is the 0-based row."""
    cols = source.columns
    if cols.mode == "pair":
        prompt = [{"role": "user", "content": _text(source, index, cols.prompt, row.get(cols.prompt))}]
        answer = _text(source, index, cols.response, row.get(cols.response))
    else:
        name = cols.messages or "messages"
        chat = row.get(name)
        if not isinstance(chat, (list, tuple)) or not chat or not all(isinstance(m, dict) for m in chat):
            raise _row_error(source, index, f"column {name!r} must be a non-empty list of {{role, content}} turns")
        if chat[-1].get("role") != "assistant":
            raise _row_error(source, index, f"the last turn is {chat[-1].get('role')!r}; the trained answer "
                                            "must be the last turn, with role 'assistant'")
        prompt = [{"role": m.get("role"), "content": _text(source, index, name, m.get("content"))} for m in chat[:-1]]
        answer = _text(source, index, name, chat[-1].get("content"))
    if source.kind == "non_reasoning":
        if CLOSE_TAG in answer:
            raise _row_error(source, index, f"a non_reasoning answer holds a reasoning block ({CLOSE_TAG}); "
                                            "use kind: reasoning for this source, or strip the block")
        answer = source.answer_prefix + answer.lstrip()
    return {"id": f"{source.label}:{index}", "messages": prompt, "prefill": "", "completion": answer,
            "completion_ids": None, "topk_ids": None, "topk_logprobs": None, "finish_reason": "stop"}


def to_record(source: MixtureSourceConfig, row: dict, index: int, trace: bool) -> dict:
    """One loaded row -> a training record tagged with `mixture_source`."""
    rec = dict(row) if trace else chat_to_record(source, row, index)
    rec["mixture_source"] = source.label
    return rec


# ----------------------------------------------------------------------------------------- loading


def _read_json_file(path: Path) -> list[dict]:
    from distillkit.data.files import read_json_rows

    rows = []
    for n, row in read_json_rows(path):
        if isinstance(row, ValueError):
            raise DistillkitError(f"{path}, line {n}: {row}")
        rows.append(row)
    return rows


def load_source(source: MixtureSourceConfig, cfg: RecipeConfig):
    """The rows of one source: a `datasets.Dataset` (stage outputs, Parquet, Hub) or a list of dicts (JSON)."""
    from distillkit.records import list_shards, read_records

    if source.is_stage:
        folder = cfg.stage_dir(source.path.removeprefix("stage:"))
        if not list_shards(folder):
            raise DistillkitError(f"source {source.label!r}: {folder} holds no records; run "
                                  f"`distillkit {folder.name}` first")
        return read_records(folder)
    path = Path(source.path).expanduser()
    if source.is_file:
        if not path.is_file():
            raise DistillkitError(f"source {source.label!r}: no such file {source.path!r}")
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            from datasets import Dataset

            from distillkit.records import unpack_soft_labels

            return Dataset(unpack_soft_labels(pq.read_table(path)))  # a packed shard's labels as topk_ids/_logprobs
        return _read_json_file(path)
    if path.is_dir():
        if not list_shards(path):
            raise DistillkitError(f"source {source.label!r}: folder {source.path!r} is not a stage output "
                                  "(no shard-*.parquet); give a .jsonl/.json/.parquet file or a stage folder")
        return read_records(path)
    import datasets

    try:
        return datasets.load_dataset(source.path, source.config, split=source.split)
    except Exception as e:  # offline, unknown name, bad config/split: one message naming the keys
        raise DistillkitError(f"source {source.label!r}: could not load Hub dataset {source.path!r} "
                              f"(config={source.config!r}, split={source.split!r}): {type(e).__name__}: {e}. "
                              "A local path that does not exist is also read as a Hub name.") from None


def load_sources(cfg: RecipeConfig) -> list[tuple[MixtureSourceConfig, Any]]:
    """Every source of `train.sources` with its rows; a source lacking columns fails here, before training."""
    loaded = []
    for i, source in enumerate(cfg.train.sources):
        rows = load_source(source, cfg)
        check_columns(source, column_names(rows), i)
        loaded.append((source, rows))
    return loaded


def source_input(source: MixtureSourceConfig, cfg: RecipeConfig) -> tuple[str, str]:
    """(where, what) for the train manifest's `inputs`: a stage folder and its config hash, or the source."""
    from distillkit.records import content_digest, read_manifest

    if source.is_stage:
        folder = cfg.stage_dir(source.path.removeprefix("stage:"))
    elif not source.is_file and Path(source.path).expanduser().is_dir():
        folder = Path(source.path).expanduser()
    elif source.is_file:
        return source.path, content_digest(source.path) or "missing"
    else:
        return source.path, f"hub:{source.config or 'default'}/{source.split}"
    manifest = read_manifest(folder)
    return str(folder), manifest.config_hash if manifest else "unknown"
