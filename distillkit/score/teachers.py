"""`score.per_teacher`: which teacher of `generate.teachers` scores each input record, and the output shards each
teacher's records fill.

The records are grouped by teacher in the order of `generate.teachers`, input order within a group; teacher j's
records fill the output shards after those of teachers 0..j-1, `shard_size` records a shard. The layout follows from
the input and the config alone, so a killed run finds its committed shards where a fresh run would write them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.records import teacher_name


@dataclass(frozen=True)
class TeacherShards:
    """One teacher's part of the output: `num_shards` shards from index `first`, holding `records` input records."""

    name: str
    records: int
    first: int
    num_shards: int

    @property
    def indices(self) -> range:
        return range(self.first, self.first + self.num_shards)


def record_teachers(cfg: RecipeConfig, records: Iterable[dict], total: int) -> list[str]:
    """The name of the teacher that scores each of the first `total` records: the record's routed teacher name
    (meta.teacher_name), or the teacher whose model is its `teacher` column when one teacher alone has that model
    (records written before names were kept). A record of no listed teacher is a DistillkitError naming it."""
    teachers = cfg.generate.teachers
    out = []
    for rec in islice(records, total):
        name = cfg.generate.teacher_named(teacher_name(rec))
        if name is None:
            name = teacher_name(rec)
            who = f"teacher {name!r}" if name else "no teacher (empty `teacher` column)"
            raise DistillkitError(
                f"score.per_teacher: record {rec.get('id')!r} was written by {who}, which is not among generate.teachers "
                f"({', '.join(t.name for t in teachers)}); add that teacher to generate.teachers, or score every record "
                "with one teacher (score.teacher, without per_teacher)")
        out.append(name)
    return out


def plan_shards(cfg: RecipeConfig, names_by_row: list[str]) -> list[TeacherShards]:
    """Each teacher's output shards, in the order of `generate.teachers` (a teacher without records has none)."""
    size = cfg.score.shard_size
    counts = Counter(names_by_row)
    plan, first = [], 0
    for t in cfg.generate.teachers:
        n = -(-counts[t.name] // size)
        plan.append(TeacherShards(t.name, counts[t.name], first, n))
        first += n
    return plan


def teacher_chunks(plan: list[TeacherShards], names_by_row: list[str], read: Callable[[], Iterator[dict]],
                   shard_size: int, committed: set[int]) -> Iterator[tuple[int, str, list[dict]]]:
    """(output shard index, teacher name, its records) for every shard of `plan`, teacher by teacher; `read()` opens
    the input again for each teacher that still has uncommitted shards (a finished teacher's records are not read)."""
    for part in plan:
        if not set(part.indices) - committed:
            continue
        mine = (rec for rec, name in zip(read(), names_by_row) if name == part.name)
        chunk: list[dict] = []
        index = part.first
        for rec in mine:
            chunk.append(rec)
            if len(chunk) == shard_size:
                yield index, part.name, chunk
                chunk, index = [], index + 1
        if chunk:
            yield index, part.name, chunk
