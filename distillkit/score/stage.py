"""The score stage: existing traces -> the teacher's top-k logprobs (or sampled soft labels) at every completion
token, resumable.

    run_score(cfg) -> Manifest          (writes cfg.stage_dir("score"): trace records with soft labels)

Input is this run's filter/generate output, another run's stage folder, or chat rows (a local file or a
Hub dataset: a `messages` column, or prompt/response columns). Each record becomes one token sequence
for the teacher: its chat template applied to the prompt messages plus the prefill, then the
completion. The completion's own token ids are used when they are the teacher's (they decode to the
completion text: this run's generate output); otherwise the text is tokenized with the teacher's
tokenizer, must decode back to the same text (else the record is skipped, `not_roundtrip`), and ends
with EOS unless the trace was cut at its length limit. A sequence longer than the teacher's context is
skipped (`too_long`). Skips are counted per reason in the manifest, never scored wrong.

Shard i of the output holds the records of input rows [i*shard_size, (i+1)*shard_size) that were
scored; a killed run keeps its committed shards and scores only the others. With `score.per_teacher` each record is
scored by its own teacher of `generate.teachers`, one engine at a time, and the shards are laid out teacher by
teacher (distillkit/score/teachers.py). A scored record's `teacher` column is the model whose labels it holds.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from distillkit.config import MixtureSourceConfig, RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.records import (
    Manifest, StageOutput, StageRecords, atomic_write_json, list_shards, make_record,
    read_manifest, record_features, split_reasoning, stable_hash,
)

log = logging.getLogger(__name__)

BATCH_TOKENS = 1 << 16
"""Tokens per scoring call: vLLM returns k+1 Python objects per token, so a call is bounded in tokens."""
SKIPPED_DIR = ".skipped"
SKIP_EXAMPLES = 20


# ----------------------------------------------------------------------------------------- input


@dataclass
class ScoreInput:
    """Where the records come from: a stage folder (read shard by shard) or chat/trace rows."""

    label: str
    folder: Path | None = None
    source: MixtureSourceConfig | None = None
    """A file or Hub dataset, as a training-mixture source (same loading and column checks)."""

    def describe(self) -> tuple[str, str]:
        """(where, what) for the manifest's `inputs`."""
        if self.folder is not None:
            manifest = read_manifest(self.folder)
            return str(self.folder), manifest.config_hash if manifest else "unknown"
        from distillkit.data.sources import source_input

        return source_input(self.source, None)


def resolve_input(cfg: RecipeConfig) -> ScoreInput:
    s = cfg.score
    spec = s.input
    if spec == "auto":
        if not ({"generate", "filter"} & set(cfg.stages)):
            raise DistillkitError("score.input is auto, which scores this run's filter or generate output, but "
                                  "neither stage is in `stages`; set score.input to a stage folder, a "
                                  ".jsonl/.json/.parquet chat file or a Hub dataset")
        spec = "stage:filter" if "filter" in cfg.stages else "stage:generate"
    if spec.startswith("stage:"):
        stage = spec.removeprefix("stage:")
        if stage not in ("generate", "filter"):
            raise DistillkitError(f"score.input {spec!r} names no stage with records; use stage:generate or "
                                  "stage:filter")
        folder = cfg.stage_dir(stage)
        if not list_shards(folder):
            raise DistillkitError(f"score.input {spec}: {folder} holds no records; run `distillkit {stage}` first")
        return ScoreInput(stage, folder=folder)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not list_shards(path):
            raise DistillkitError(f"score.input {spec!r} is a folder without shard-*.parquet (not a stage output); "
                                  "give a stage folder, a .jsonl/.json/.parquet chat file or a Hub dataset name")
        return ScoreInput(path.name, folder=path)
    fields: dict[str, Any] = {"path": spec, "weight": 1.0}
    if "columns" in s.model_fields_set:
        fields["columns"] = s.columns
    if Path(spec).suffix.lower() not in (".jsonl", ".json", ".parquet"):
        fields.update(config=s.config, split=s.split)
    source = MixtureSourceConfig(**fields)
    return ScoreInput(source.label, source=source)


def iter_input(inp: ScoreInput, cfg: RecipeConfig) -> tuple[int, Iterator[dict]]:
    """(number of rows, records): stage records as they are, chat rows as records without token ids."""
    if inp.folder is not None:
        records = StageRecords(inp.folder)
        return len(records), iter(records)
    from distillkit.data.sources import check_columns, column_names, is_trace, load_source, to_record

    rows = load_source(inp.source, cfg)
    columns = column_names(rows)
    check_columns(inp.source, columns)
    trace = is_trace(inp.source, columns)

    def gen() -> Iterator[dict]:
        for i, row in enumerate(rows):
            rec = to_record(inp.source, row, i, trace)
            rec.pop("mixture_source", None)
            yield rec if trace else chat_record(rec, i, inp.label, cfg.score.prefill)

    return len(rows), gen()


def chat_record(rec: dict, index: int, label: str, prefill: str | None) -> dict:
    """A chat row (prompt turns + answer) as a trace record; an answer opening with `prefill` has it moved
    into the prefill, where generate puts it."""
    messages, answer = rec["messages"], rec["completion"]
    pre = prefill if prefill and answer.startswith(prefill) else ""
    completion = answer[len(pre):]
    reasoning, response, closed = split_reasoning(completion, pre)
    problem = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    return make_record(id=f"{label}:{index}", prompt_id=stable_hash(messages), sample_index=index, source=label,
                       problem=problem, messages=messages, prefill=pre, completion=completion,
                       reasoning=reasoning, response=response, reasoning_closed=closed, finish_reason="stop",
                       completion_ids=None)


# ----------------------------------------------------------------------------------------- sequences


@dataclass
class Prepared:
    record: dict
    sequence: list[int] | None = None
    start: int = 0
    """Index of the first completion token in `sequence`."""
    skip: str | None = None
    retokenized: bool = False


def completion_ids(tokenizer, record: dict) -> tuple[list[int] | None, bool]:
    """(the teacher's ids of the completion, whether they were re-tokenized); None when the text does not
    round-trip through the teacher's tokenizer."""
    from distillkit.tokenizer_checks import ids_spell

    eos = tokenizer.eos_token_id
    text = record.get("completion") or ""
    stored = record.get("completion_ids")
    stored = stored.tolist() if hasattr(stored, "tolist") else list(stored or [])
    if stored and ids_spell(tokenizer, stored, text):
        return stored, False  # the teacher's own sample: score exactly these tokens
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids_spell(tokenizer, ids, text):
        return None, True
    if record.get("finish_reason") != "length" and eos is not None:
        ids = ids + [eos]  # the teacher's distribution where the turn ends is a label too
    return ids, True


def prepare(tokenizer, record: dict, max_len: int | None) -> Prepared:
    from distillkit.engines.base import render_prompt

    if not (record.get("completion") or "") and not len(record.get("completion_ids") or []):
        return Prepared(record, skip="empty_completion")
    _, prompt_ids, _ = render_prompt(tokenizer, list(record.get("messages") or []), record.get("prefill") or "")
    ids, retokenized = completion_ids(tokenizer, record)
    if ids is None:
        return Prepared(record, skip="not_roundtrip", retokenized=True)
    if max_len is not None and len(prompt_ids) + len(ids) >= max_len:  # vLLM wants room for the 1 sampled token
        return Prepared(record, skip="too_long", retokenized=retokenized)
    return Prepared(record, prompt_ids + ids, len(prompt_ids), retokenized=retokenized)


def _batches(prepared: list[Prepared]) -> Iterator[list[Prepared]]:
    batch, tokens = [], 0
    for p in prepared:
        if batch and tokens + len(p.sequence) > BATCH_TOKENS:
            yield batch
            batch, tokens = [], 0
        batch.append(p)
        tokens += len(p.sequence)
    if batch:
        yield batch


def label_batch(scorer, sequences: list[list[int]], starts: list[int], k: int, num_samples: int = 0) -> list[tuple]:
    """The scorer's labels for one batch: top-k (ids, logprobs) per sequence, or with `num_samples` sampled labels
    (ids, log(count / N), token_logprobs), which only a scorer with full logits draws (`sample`)."""
    if not num_samples:
        return scorer.score(sequences, starts, k)
    if not hasattr(scorer, "sample"):
        raise DistillkitError(f"score.soft_labels: sampled needs a scorer that sees the teacher's whole distribution; "
                              f"the {scorer.name} scorer returns top-k logprobs only. Set score.teacher.backend: "
                              "transformers")
    return scorer.sample(sequences, starts, num_samples)


def score_shard(records: list[dict], scorer, k: int, teacher: str, features, num_samples: int = 0,
                name: str | None = None) -> tuple[list[dict], list[Prepared]]:
    """Score one shard's records: (scored records in the trace schema, the skipped ones). `num_samples` > 0:
    sampled soft labels with that many draws per token instead of the top-k. `teacher` (the scoring model) becomes
    each record's `teacher` column, `name` its routed teacher name (`score.per_teacher`)."""
    prepared = [prepare(scorer.tokenizer, r, scorer.max_len) for r in records]
    todo = [p for p in prepared if p.skip is None]
    defaults = make_record(prompt_id="", problem="")
    rows = []
    for batch in _batches(todo):
        labels = label_batch(scorer, [p.sequence for p in batch], [p.start for p in batch], k, num_samples)
        for p, (ids, lps, *tlp) in zip(batch, labels):
            rec = {name: defaults.get(name) if p.record.get(name) is None else p.record[name] for name in features}
            comp = p.sequence[p.start:]
            meta = relabel_meta(json.loads(rec.get("meta") or "{}"), rec.get("teacher"), teacher, name)
            meta.update(scored_by=teacher, score_backend=scorer.name, retokenized=p.retokenized)
            rec.update(completion_ids=comp, completion_tokens=len(comp), prompt_tokens=p.start, teacher=teacher,
                       topk_ids=ids, topk_logprobs=lps, meta=json.dumps(meta, sort_keys=True))
            if tlp:
                rec["token_logprobs"] = tlp[0]
            rows.append(rec)
    return rows, [p for p in prepared if p.skip is not None]


def relabel_meta(meta: dict, generator: str | None, teacher: str, name: str | None) -> dict:
    """A scored record's meta: its labels are `teacher`'s, so training reads the record as that teacher's (its
    `teacher` column and routed `name`); the model that wrote the completion, when another, stays as generated_by
    (and its routed name as generated_by_name)."""
    if generator and generator != teacher:
        meta["generated_by"] = generator
    if name is not None:
        meta["teacher_name"] = name
    elif "teacher_name" in meta:  # one scoring teacher for every record: the generator's route no longer applies
        meta["generated_by_name"] = meta.pop("teacher_name")
    return meta


# ----------------------------------------------------------------------------------------- running


def _chunks(records: Iterator[dict], size: int, limit: int | None) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for n, rec in enumerate(records):
        if limit is not None and n >= limit:
            break
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress(total: int, done: int):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from distillkit.progress import progress_bar

    progress = progress_bar(TextColumn("score"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
                            TextColumn("{task.fields[tok_s]:>8.1f} tok/s"), TextColumn("ETA"), TimeRemainingColumn(),
                            unit="records")
    return progress, progress.add_task("score", total=total, completed=done, tok_s=0.0)


def run_score(cfg: RecipeConfig, overwrite: bool = False, scorer=None) -> Manifest:
    """Score every completion token of the input records with the teacher (with `score.per_teacher`, each record
    with its own teacher, one engine at a time); resume if killed.

    `scorer` lets a caller reuse a started engine (tests, benchmarks): with `score.per_teacher` a dict {teacher
    name: scorer}. By default one is built from the recipe per teacher and closed when its records are done."""
    from distillkit.stage_hash import stage_config_hash

    s = cfg.score
    folder = cfg.stage_dir("score")
    inp = resolve_input(cfg)
    out = StageOutput(folder, "score", stage_config_hash(cfg, "score"), config=s.model_dump(mode="json"),
                      inputs=dict([inp.describe()]))
    if not overwrite and out.is_complete():
        log.info("score: %s is complete for this config; nothing to do", folder)
        return out.manifest()
    out.begin(overwrite=overwrite)
    skipped_dir = folder / SKIPPED_DIR
    if overwrite:
        for p in skipped_dir.glob("*.json"):
            p.unlink()
    committed = out.committed_shard_indices()
    num_rows, records = iter_input(inp, cfg)
    total = min(num_rows, s.limit) if s.limit else num_rows
    chunks, num_shards, given = _layout(cfg, inp, records, total, committed, scorer)
    stray = committed - set(range(num_shards))
    if stray:
        raise DistillkitError(f"{folder} holds shards {sorted(stray)} that this input does not make; "
                              "rerun with --overwrite to start over")
    tokens, seconds = _score_shards(cfg, chunks, total, committed, out, skipped_dir, given)
    counts, stats = _summary(folder, num_shards)
    stats.update(_teacher_stats(cfg), logprobs_mode="raw_logprobs", **_label_stats(s), soft_label_format=s.label_format,
                 tokens_scored_this_run=tokens,
                 tokens_per_s=round(tokens / seconds, 2) if tokens and seconds > 0 else None)
    counts["shards_resumed"] = len(committed)
    if counts["records"] == 0:
        raise DistillkitError(f"score: none of the {counts['records_in']} input records could be scored "
                              f"(skipped: {stats['skipped_by_reason']}); see {skipped_dir}")
    return out.finish(counts=counts, stats=stats, timings={"score_s": round(seconds, 3)},
                      versions=("distillkit", "datasets", "pyarrow", "torch", "transformers", "vllm"))


def _layout(cfg: RecipeConfig, inp: ScoreInput, records, total: int, committed: set[int], scorer):
    """(the shards to score as (index, teacher name or None, records), how many shards the input makes, the
    scorers given per teacher name): input order for one teacher, grouped by teacher with `score.per_teacher`
    (distillkit/score/teachers.py)."""
    s = cfg.score
    if not s.per_teacher:
        return (((i, None, c) for i, c in enumerate(_chunks(records, s.shard_size, s.limit))),
                -(-total // s.shard_size), {} if scorer is None else {None: scorer})
    from distillkit.score.teachers import plan_shards, record_teachers, teacher_chunks

    if scorer is not None and not isinstance(scorer, dict):
        raise TypeError("with score.per_teacher, `scorer` is a dict {teacher name: scorer}")
    names = record_teachers(cfg, records, total)
    plan = plan_shards(cfg, names)
    log.info("score: per teacher, %s", ", ".join(f"{p.name} {p.records} records" for p in plan))
    chunks = teacher_chunks(plan, names, lambda: iter_input(inp, cfg)[1], s.shard_size, committed)
    return chunks, sum(p.num_shards for p in plan), dict(scorer or {})


def _teacher_stats(cfg: RecipeConfig) -> dict:
    s = cfg.score
    if not s.per_teacher:
        return {"teacher": s.teacher.model, "backend": s.teacher.backend}
    routed = [cfg.generate.routed(t.name) for t in cfg.generate.teachers]
    return {"teacher": {t.name: t.model for t in routed}, "backend": {t.name: t.backend for t in routed}}


def _label_stats(s) -> dict:
    if s.soft_labels != "sampled":
        return {"topk": s.topk}
    return {"soft_labels": "sampled", "soft_label_samples": s.soft_label_samples,
            "soft_label_temperature": s.soft_label_temperature}


def _score_shards(cfg: RecipeConfig, chunks, total: int, committed: set[int], out: StageOutput, skipped_dir: Path,
                  given: dict) -> tuple[int, float]:
    """Score the shards not yet committed, each written with its skipped records' file, under a progress bar. A
    shard's teacher (None: score.teacher) scores it with the scorer `given` for it, else one built from the recipe
    when its first shard needs it and closed when the next teacher's shards begin (one engine at a time). Returns
    (tokens scored, seconds spent scoring, not counting the engines' starts)."""
    s = cfg.score
    features = record_features(s.label_width, s.label_format)
    num_samples = s.soft_label_samples if s.soft_labels == "sampled" else 0
    teacher, scorer, own = "", None, False  # "": no teacher's engine yet (None is score.teacher's)
    seconds = 0.0  # scoring only: not the engine's start
    tokens = 0
    progress, task = _progress(total, min(total, len(committed) * s.shard_size))
    try:
        with progress:
            for i, name, chunk in chunks:
                if i in committed:
                    continue
                section = s if name is None else cfg.score_for(name)
                if name != teacher:
                    if own:
                        scorer.close()
                    teacher, scorer, own = name, given.get(name), name not in given
                    if own:
                        from distillkit.engines.scorers import make_scorer

                        scorer = make_scorer(section, cfg.seed)
                t_shard = time.time()
                rows, skipped = score_shard(chunk, scorer, s.topk, section.teacher.model, features, num_samples, name)
                seconds += time.time() - t_shard
                scored = sum(r["completion_tokens"] for r in rows)
                atomic_write_json(skipped_dir / f"{i:05d}.json",
                                  {"records": len(chunk), "retokenized": sum(json.loads(r["meta"])["retokenized"]
                                                                             for r in rows),
                                   "skipped": [{"id": p.record.get("id"), "reason": p.skip} for p in skipped],
                                   **({} if name is None else {"teacher": name, "scored": len(rows), "tokens": scored})})
                out.write_shard(i, rows, features)
                tokens += scored
                progress.update(task, advance=len(chunk), tok_s=tokens / max(seconds, 1e-9))
    finally:
        if own and scorer is not None:
            scorer.close()
    return tokens, seconds


def _summary(folder: Path, num_shards: int) -> tuple[dict, dict]:
    import pyarrow.parquet as pq

    from distillkit.records import soft_label_bytes

    reasons: Counter = Counter()
    examples: list[dict] = []
    records_in = retokenized = 0
    per_teacher: dict[str, Counter] = {}
    for i in range(num_shards):
        path = folder / SKIPPED_DIR / f"{i:05d}.json"
        if not path.exists():
            continue
        info = json.loads(path.read_text())
        records_in += info["records"]
        retokenized += info["retokenized"]
        reasons.update(x["reason"] for x in info["skipped"])
        examples += info["skipped"][: SKIP_EXAMPLES - len(examples)]
        if "teacher" in info:  # score.per_teacher
            per_teacher.setdefault(info["teacher"], Counter()).update(
                records_in=info["records"], records=info["scored"], skipped=len(info["skipped"]),
                tokens=info["tokens"], shards=1)
    records = tokens = label_bytes = 0
    for shard in list_shards(folder):
        meta = pq.ParquetFile(shard).metadata
        records += meta.num_rows
        tokens += sum(pq.read_table(shard, columns=["completion_tokens"]).column(0).to_pylist())
        label_bytes += soft_label_bytes(shard)
    counts = {"records_in": records_in, "records": records, "skipped": sum(reasons.values()),
              "tokens": tokens, "shards": num_shards}
    if per_teacher:
        counts["per_teacher"] = {name: dict(c) for name, c in per_teacher.items()}
    stats = {"skipped_by_reason": dict(sorted(reasons.items())), "skipped_examples": examples,
             "retokenized": retokenized,
             "soft_label_bytes_per_token": round(label_bytes / tokens, 2) if tokens else None}
    return counts, stats
