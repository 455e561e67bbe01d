"""The filter's per-shard work: read one input shard, run the Judge chain on it, write its judged file.

`Judge` (`distillkit.verify.chain`) holds the built verifiers of one process and judges a batch of records;
`verify_shard` reads one input shard in batches (text columns only: soft labels and token ids stay on disk) and
writes a small *judged* file beside the output: per record its verdicts, whether it is still in, and the keys
the global steps need (prompt id, sample index, length, exact hash, MinHash bands and signature).
Nothing in here looks across shards, so shards are verified in any order, in any process or machine
(distillkit/filter/executors.py), and a finished shard is never verified again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.errors import DistillkitError
from distillkit.verify.chain import Judge, Judged, Tally, merge_numbers

log = logging.getLogger(__name__)

# What the verifiers read; soft labels and token ids stay on disk until records are written back.
VERIFY_COLUMNS = ["id", "prompt_id", "sample_index", "source", "problem", "gold_answer", "tests", "prefill",
                  "completion", "reasoning", "response", "reasoning_closed", "completion_tokens", "finish_reason",
                  "teacher", "meta"]  # teacher and meta: which teacher wrote it (records.teacher_name), for the funnel
REQUIRED_COLUMNS = ("id", "prompt_id")
_DERIVED = ("reasoning", "response", "reasoning_closed")  # from prefill + completion when a shard lacks them
BATCH = 256
JUDGED_FORMAT = 2  # 2: the teacher and first rejection of each record (per-teacher funnels)


# ----------------------------------------------------------------------------------------- shard files


class ShardError(DistillkitError):
    """An input shard that cannot be read (corrupt, truncated, or lacking a required column)."""


def shard_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def judged_path(work: Path, index: int) -> Path:
    return work / f"judged-{index:05d}.parquet"


def _verdict_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("step", pa.string()), ("passed", pa.bool_()), ("reason", pa.string()),
                               ("detail", pa.string())]))


def read_judged_meta(path: Path) -> dict[str, Any] | None:
    """The metadata of a finished judged file, or None when it is missing or unreadable."""
    import pyarrow.parquet as pq

    try:
        return json.loads((pq.read_schema(path).metadata or {})[b"distillkit"])
    except Exception:  # missing, partial (pyarrow's ArrowInvalid) or foreign file
        return None


def is_judged(work: Path, index: int, source: Path, config_hash: str) -> bool:
    meta = read_judged_meta(judged_path(work, index))
    return bool(meta) and meta.get("format") == JUDGED_FORMAT and meta.get("config_hash") == config_hash \
        and meta.get("input") == shard_fingerprint(source)


def open_shard(path: Path):
    """A pyarrow ParquetFile of an input shard; a corrupt or truncated one raises ShardError naming it."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except Exception as e:  # ArrowInvalid, OSError: half-written or foreign file
        raise ShardError(f"{path}: not a readable Parquet shard ({type(e).__name__}: {e}). It is corrupt or "
                         "truncated (a copy that stopped half-way?)") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ShardError(f"{path}: has no column {', '.join(map(repr, missing))} (columns: {names}); "
                         "it is not a distillkit trace shard")
    return pf


def read_verify_rows(pf, batch_rows: int = BATCH):
    """Batches of the verifier columns as dicts; columns the shard lacks are None in every record (the
    reasoning split is derived from the completion), so each verifier gives its "cannot judge" reason."""
    from distillkit.records import split_reasoning

    names = pf.schema_arrow.names
    have = [c for c in VERIFY_COLUMNS if c in names]
    absent = [c for c in VERIFY_COLUMNS if c not in names]
    derive = any(c in absent for c in _DERIVED)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=have):
        rows = batch.to_pylist()
        if absent:
            for r in rows:
                r.update(dict.fromkeys(absent))
                if derive:  # an imported dataset without the split: make it from the text, as generate does
                    reasoning, response, closed = split_reasoning(r.get("completion") or "", r.get("prefill") or "")
                    r.update({k: v for k, v in zip(_DERIVED, (reasoning, response, closed)) if k in absent})
        yield rows


def verify_shard(source: Path, index: int, work: Path, judge: Judge, config_hash: str,
                 on_done: Callable[[int], None] | None = None) -> Tally:
    """Judge every record of one input shard and write `work/judged-<index>.parquet` (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = open_shard(source)
    started = time.time()
    tally = Tally(steps=judge.all_steps())
    usage_before = judge.usage()
    parts: list[pa.Table] = []
    batches = read_verify_rows(pf)
    while True:
        try:  # only the reading: a verifier's own OSError is not a broken shard
            rows = next(batches)
        except StopIteration:
            break
        except (OSError, pa.ArrowException) as e:  # the file's body is damaged past its footer
            raise ShardError(f"{source}: reading it failed ({type(e).__name__}: {e}); it is corrupt or truncated") from None
        parts.append(_judged_table(rows, judge.judge(rows, tally, on_done), judge))
    for step, stats in judge.usage().items():
        tally.verifiers[step] = merge_numbers(stats, usage_before.get(step, {}), sign=-1)
    table = pa.concat_tables(parts) if parts else _judged_table([], None, judge)
    meta = {"format": JUDGED_FORMAT, "config_hash": config_hash, "input": shard_fingerprint(source),
            "rows": table.num_rows, "tally": tally.to_json(), "started": started, "finished": time.time()}
    table = table.replace_schema_metadata({"distillkit": json.dumps(meta)})
    from distillkit.records import atomic_path

    with atomic_path(judged_path(work, index), fsync=False) as tmp:  # scratch: a lost one is verified again
        pq.write_table(table, tmp)
    return tally


def _judged_table(rows: list[dict[str, Any]], j: Judged | None, judge: Judge):
    import pyarrow as pa

    from distillkit.records import teacher_name

    def fixed(values: np.ndarray | None, width: int, typ):
        flat = pa.array(values.reshape(-1) if values is not None else np.zeros(0), type=typ)
        return pa.FixedSizeListArray.from_arrays(flat, width)

    hasher = judge.hasher
    cols = {
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "prompt_id": pa.array([r["prompt_id"] for r in rows], pa.string()),
        "source": pa.array([r.get("source") or "" for r in rows], pa.string()),
        "sample_index": pa.array([r.get("sample_index") or 0 for r in rows], pa.int32()),
        "teacher": pa.array([teacher_name(r) for r in rows], pa.string()),
        "rejected_step": pa.array([f[0] if f else None for f in (j.rejected_by if j else [])], pa.string()),
        "rejected_reason": pa.array([f[1] if f else None for f in (j.rejected_by if j else [])], pa.string()),
        "order_len": pa.array(j.order_len if j else [], pa.int64()),
        "alive": pa.array(j.alive if j else [], pa.bool_()),
        "passed_verifiers": pa.array(j.passed_verifiers if j else [], pa.bool_()),
        "exact": fixed(j.exact if j else None, 2, pa.uint64()),
        "verdicts": pa.array([[{"step": s, "passed": v.passed, "reason": v.reason,
                                "detail": v.detail if v.passed is not True else ""} for s, v in vs]
                              for vs in (j.verdicts if j else [])], _verdict_type()),
    }
    if hasher is not None:
        cols["bands"] = fixed(j.bands if j else None, hasher.bands, pa.uint64())
        cols["signature"] = fixed(j.signatures if j else None, hasher.num_perm, pa.uint32())
    return pa.table(cols)
