"""Whose vocabulary each training record's soft labels are on, when the records come from several teachers.

With `generate.teachers` the records of one run come from several models (the `teacher` column holds each record's
teacher model), possibly with different tokenizers: a SmolLM2 teacher sharing the student's tokenizer, a Gemma 3
teacher whose top-k ids need the cross-tokenizer map (`distillkit.train.cross_tokenizer`). `build_train_dataset`
(distillkit/train/data.py) then decides per teacher, not once for all records:

* which teachers there are: one cheap pass over the `teacher` column (`teacher_counts`); a record with an empty
  column (one written before the column was filled) belongs to `LabelTeachers.default`, the run's labelling teacher;
* whether a teacher's ids are the student's: `check_same_tokenizer` on the first 64 traces of that teacher
  (`teacher_samples` reads only the `teacher`, `completion` and `completion_ids` columns, and stops once every
  teacher has its sample);
* the cross-tokenizer map of a teacher whose ids are not the student's: from its own tokenizer, loaded (once, with
  `distillkit.models.load_tokenizer_and_config`) only for such a teacher when `train.kd.cross_tokenizer` is set.

Each teacher's figures (examples, soft-labelled tokens, and for a mapped one its alignment summary) go to the train
manifest as `stats.data.teachers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from distillkit.errors import DistillkitError
from distillkit.train.labels import _first

log = logging.getLogger(__name__)

SAMPLE = 64  # traces per teacher checked by check_same_tokenizer
_COLUMNS = ("teacher", "completion", "completion_ids")


@dataclass
class TeacherSource:
    """One teacher's soft labels as the examples read them: on the student's ids (`same`), or moved onto them by
    `cross` (a `CrossTokenizerMap`, its figures summed in `stats`), or neither (text only); and its counts."""

    same: bool
    cross: Any = None
    stats: Any = None
    examples: int = 0
    kd_tokens: int = 0

    def figures(self) -> dict:
        out = {"examples": self.examples, "kd_tokens": self.kd_tokens, "teacher_ids_used": self.same}
        if self.stats is not None:
            out["cross_tokenizer"] = self.stats.summary()
        return out


class LabelTeachers:
    """The teachers of a run with `generate.teachers`: a record's teacher is its `teacher` column (the model spec),
    `default` (the run's labelling teacher) when the column is empty; `cross_tokenizer` (train.kd.cross_tokenizer)
    says whether a teacher on another vocabulary is mapped; its tokenizer is loaded once, when it is needed."""

    def __init__(self, default: str, cross_tokenizer: bool, load: Callable[[str], Any] | None = None):
        self.default, self.cross_tokenizer = default, cross_tokenizer
        self._load = load or _load_tokenizer
        self._tokenizers: dict[str, Any] = {}

    def of(self, record: dict) -> str:
        return record.get("teacher") or self.default

    def tokenizer(self, spec: str):
        if spec not in self._tokenizers:
            self._tokenizers[spec] = self._load(spec)
        return self._tokenizers[spec]


def _load_tokenizer(spec: str):
    from distillkit.models import load_tokenizer_and_config

    return load_tokenizer_and_config(spec)[0]


def teacher_source(same: bool, tokenizer, records, topk: int, teacher_tokenizer,
                   teacher: str | None = None) -> TeacherSource:
    """One teacher's `TeacherSource` from its records (or their first traces): its ids are the student's (`same`, from
    `check_same_tokenizer`), or are mapped onto `tokenizer`'s by a `CrossTokenizerMap` from `teacher_tokenizer()`
    (called only then; None refuses the labels, naming `teacher` when the run has several)."""
    source = TeacherSource(same=same)
    traced = not same and any(rec.get("completion_ids") is not None and len(rec["completion_ids"])
                              for rec in _first(records, SAMPLE))
    whose = f"the records of teacher {teacher}" if teacher else "the records"
    if topk > 0 and not same and (traced or teacher is None):
        t_tok = teacher_tokenizer()
        if t_tok is None:
            raise DistillkitError(
                f"{whose}: their completion_ids do not decode to their text with the student's tokenizer: the "
                "teacher uses another vocabulary, so its stored top-k soft labels are not on the student's ids. Set "
                "train.kd.cross_tokenizer: true (map them by spelling; preflight reports how much maps), "
                "train.kd.enabled: false (plain SFT on the text), or pick a student of the teacher's family.")
        from distillkit.train.cross_tokenizer import AlignmentStats, CrossTokenizerMap

        source.cross, source.stats = CrossTokenizerMap(t_tok, tokenizer), AlignmentStats()
    if traced:
        log.warning("student tokenizer differs from the teacher's%s: re-tokenizing completion text",
                    f" ({teacher})" if teacher else "")
    return source


def teacher_figures(sources: dict, per_teacher: bool, topk: int, info: dict) -> None:
    """The cross-tokenizer figures (summed over the mapped teachers) into `info`, and with several teachers
    (`per_teacher`) each one's figures as `info["teachers"]`."""
    mapped = [s.stats for s in sources.values() if s.stats is not None]
    if mapped:
        from distillkit.train.cross_tokenizer import AlignmentStats

        total = AlignmentStats()
        for stats in mapped:
            total.add(stats)
        info["cross_tokenizer"] = total.summary()
        log.info("train: cross-tokenizer soft labels on %.1f%% of student positions, %.1f%% of the teacher's top-%d "
                 "mass mapped", 100 * info["cross_tokenizer"]["share_positions_labelled"],
                 100 * info["cross_tokenizer"]["share_topk_mass_mapped"], topk)
    if per_teacher:
        info["teachers"] = {spec: s.figures() for spec, s in sources.items()}


def teacher_counts(records, of: Callable[[dict], str]) -> dict[str, int]:
    """Records per teacher (`of(record)`), in order of first appearance, from the `teacher` column alone."""
    counts: dict[str, int] = {}
    for rec in _light(records, ("teacher",)):
        key = of(rec)
        counts[key] = counts.get(key, 0) + 1
    return counts


def teacher_samples(records, of: Callable[[dict], str], counts: dict[str, int], n: int = SAMPLE) -> dict[str, list]:
    """The first `n` traces with `completion_ids` of each teacher ({teacher, completion, completion_ids} only; through
    the view's special map for `MappedRecords`); stops once every teacher has them or has no more records."""
    samples: dict[str, list] = {key: [] for key in counts}
    left = dict(counts)
    pending = set(counts)
    for rec in _light(records, _COLUMNS):
        key = of(rec)
        left[key] -= 1
        ids = rec.get("completion_ids")
        if ids is not None and len(ids) and len(samples[key]) < n:
            samples[key].append(rec)
        if len(samples[key]) >= n or left[key] == 0:
            pending.discard(key)
            if not pending:
                break
    return samples


def _light(records, columns: tuple[str, ...]) -> Iterator[dict]:
    """The records with only `columns` read (a stage folder's soft labels are not decoded); a `MappedRecords` view's
    records come through its special map."""
    if hasattr(records, "special_map") and hasattr(records, "records"):  # MappedRecords (train/data.py)
        for rec in _light(records.records, columns):
            yield records.special_map.map_record(rec)
    elif hasattr(records, "shards") and hasattr(records, "folder"):  # StageRecords: parquet columns
        yield from _parquet_rows(records.shards, columns)
    elif isinstance(records, list):
        yield from records
    else:  # a datasets.Dataset
        names = [c for c in columns if c in records.column_names]
        yield from records.select_columns(names) if names else ({} for _ in range(len(records)))


def _parquet_rows(shards, columns: tuple[str, ...]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    from distillkit.records import reading_shard

    for shard in shards:
        with reading_shard(shard):
            pf = pq.ParquetFile(shard)
            names = [c for c in columns if c in pf.schema_arrow.names]
        batches = pf.iter_batches(batch_size=256, columns=names) if names else None
        while batches is not None:
            with reading_shard(shard):
                batch = next(batches, None)
            if batch is None:
                break
            yield from batch.to_pylist()
        if not names:  # no teacher column: every record is the default teacher's
            yield from ({} for _ in range(pf.metadata.num_rows))

