"""Pass 3 of the filter stage, per shard: the input records with their verdicts appended, split into a kept and a
rejected output shard (Arrow batches: soft labels are copied as buffers, never turned into Python lists)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from distillkit.filter.decide import Decisions
from distillkit.filter.shards import judged_path
from distillkit.verify.verifiers.base import Verdict

REJECTED = "rejected"


def _annotate_batch(batch, judged_verdicts: list[list[dict]], extra: list[list[tuple[str, Verdict]]], verdict_type):
    """`batch` with the filter's verdicts appended to `verdicts` and non-pass details put in `meta`."""
    import pyarrow as pa

    names = batch.schema.names
    old_verdicts = batch.column("verdicts").to_pylist() if "verdicts" in names else [None] * batch.num_rows
    old_meta = batch.column("meta").to_pylist() if "meta" in names else [None] * batch.num_rows
    verdicts, metas = [], []
    for row_verdicts, meta, judged, more in zip(old_verdicts, old_meta, judged_verdicts, extra):
        entries = [(v["step"], v["passed"], v["reason"], v["detail"]) for v in judged]
        entries += [(s, v.passed, v.reason, v.detail if v.passed is not True else "") for s, v in more]
        verdicts.append(list(row_verdicts or []) + [{"verifier": s, "passed": p, "reason": r} for s, p, r, _ in entries])
        details = {s: d for s, p, r, d in entries if d and p is not True}
        if details:  # the record schema's verdict entries have no detail field; keep it readable in `meta`
            try:
                parsed = json.loads(meta or "{}")
            except json.JSONDecodeError:
                parsed = {"original_meta": meta}
            parsed["filter_details"] = details
            meta = json.dumps(parsed, ensure_ascii=False)
        metas.append(meta if meta is not None else "{}")
    arrays = {name: batch.column(name) for name in names}
    arrays["verdicts"] = pa.array(verdicts, verdict_type)
    arrays["meta"] = pa.array(metas, pa.string())
    return arrays


class _ShardWriter:
    """Writes one output shard batch by batch to a temporary file (`records.atomic_path`); `commit` renames it
    into place, `abort` removes it. A shard with no rows gets no file."""

    def __init__(self, final: Path, schema):
        self.final, self.schema = final, schema
        self.writer = None
        self.rows = 0
        self._file = contextlib.ExitStack()

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        from distillkit.records import atomic_path, parquet_options

        if table.num_rows == 0:
            return
        if self.writer is None:
            tmp = self._file.enter_context(atomic_path(self.final))
            self.writer = pq.ParquetWriter(tmp, self.schema, **parquet_options(self.schema))
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._file.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
            err = RuntimeError("aborted")
            self._file.__exit__(type(err), err, None)  # atomic_path removes the temporary file


PASS_RATE = "teacher_pass_rate"
"""Output column: the share of the record's prompt's samples that passed the verifiers."""


def _output_schema(pf):
    """The input's schema (soft-label width included) with `verdicts` typed as the record schema's, and the
    prompt's teacher pass rate."""
    from datasets import Features, Value

    from distillkit.records import record_features

    features = Features.from_arrow_schema(pf.schema_arrow)
    features["verdicts"] = record_features()["verdicts"]  # an input written without features has `[]` as null
    if "meta" not in features:
        features["meta"] = record_features()["meta"]
    features[PASS_RATE] = Value("float32")
    return features.arrow_schema


def write_shard_outputs(source: Path, index: int, work: Path, out_dir: Path, offset: int, d: Decisions, ids,
                        write_rejected: bool) -> tuple[int, int]:
    """Split input shard `index` into kept and rejected output shards; returns (kept, rejected) counts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from distillkit.filter.shards import open_shard
    from distillkit.records import rows_per_batch, shard_path

    pf = open_shard(source)
    schema = _output_schema(pf)
    verdict_type = schema.field("verdicts").type
    judged = pq.read_table(judged_path(work, index), columns=["verdicts"]).column("verdicts").to_pylist()
    kept_w = _ShardWriter(shard_path(out_dir, index), schema)
    rej_w = _ShardWriter(shard_path(out_dir / REJECTED, index), schema)
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=rows_per_batch(pf)):  # ~16 MB per batch and row group
            n = batch.num_rows
            rows = range(offset + row, offset + row + n)
            arrays = _annotate_batch(batch, judged[row:row + n], [d.verdicts_of(i, ids) for i in rows], verdict_type)
            if d.pass_rate is not None:
                arrays[PASS_RATE] = pa.array(d.pass_rate[offset + row: offset + row + n], pa.float32())
            table = pa.table([arrays.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema.remove_metadata())
            table = table.cast(schema)
            mask = pa.array(d.kept[offset + row: offset + row + n])
            kept_w.write(table.filter(mask))
            if write_rejected:
                rej_w.write(table.filter(pc.invert(mask)))
            row += n
        rej_w.commit()
        kept_w.commit()
    except BaseException:
        kept_w.abort()
        rej_w.abort()
        raise
    return kept_w.rows, row - kept_w.rows
