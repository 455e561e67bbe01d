"""Question curation around the teacher's sampling: what to ask it, and how often.

Data studies found the choice of *questions* worth more than filtering answers (OpenThoughts3): s1K and
LIMO keep what a model does not already solve, the AM data regenerated failed prompts until a verifier
passed. Two steps of the generate stage do that here, both judged by the filter's own verifiers:

    prescreen(cfg, prompts, folder)   before any teacher call, the student answers each prompt
                                      (`generate.prescreen`); prompts it solves are dropped (or a share kept).
                                      Verdicts go to <generate>/prescreen.json, so a resumed run reuses them.
    sample_until_verified(...)        per shard, prompts with no verified sample get up to
                                      `generate.resample.rounds` more rounds of n samples, new seeds.
    resample_stats(folder)            per-round counts for the manifest, read back from the shards.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from distillkit.config import FilterConfig, RecipeConfig
from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)

PRESCREEN_FILE = "prescreen.json"
CORRECTNESS = ("math", "code", "judge")  # the verifiers that say whether an answer is right


def verified(judge, rows: list[dict]) -> np.ndarray:
    """Per record: no verifier of `judge`'s chain rejected it (what the filter counts as a teacher pass)."""
    from distillkit.verify.chain import Tally

    return judge.judge(rows, Tally(steps=judge.all_steps())).passed_verifiers


def verifiers_only(cfg: FilterConfig, kinds: tuple[str, ...] | None = None) -> FilterConfig:
    """The filter config with its verifiers (those of `kinds`, or all), no decontamination and no dedup keys.

    Each source's own chain (`filter.source_verifiers`) is kept the same way, so a prompt is judged as the filter
    will judge its traces; a source chain left with no verifier of `kinds` judges nothing (see `unjudged_sources`)."""
    def pick(specs):
        return [v for v in specs if kinds is None or v.kind in kinds]

    specs = pick(cfg.verifiers)
    if not specs:
        raise DistillkitError("generate.prescreen judges the student's answers with the correctness verifiers of "
                              f"filter.verifiers ({', '.join(CORRECTNESS)}), and this recipe lists none "
                              f"({[v.kind for v in cfg.verifiers]}); add one, or set generate.prescreen.enabled: false")
    near = cfg.dedup.near.model_copy(update={"enabled": False})
    return cfg.model_copy(update={"verifiers": specs,
                                  "source_verifiers": {src: pick(c) for src, c in cfg.source_verifiers.items()},
                                  "decontaminate": cfg.decontaminate.model_copy(update={"enabled": False}),
                                  "dedup": cfg.dedup.model_copy(update={"exact": False, "near": near})})


def unjudged_sources(cfg: FilterConfig) -> set[str]:
    """Sources whose own chain is empty: no verifier says whether an answer to them is right. The pre-screen
    never counts such a prompt as solved by the student (e.g. R1's general prompts: no gold answer)."""
    return {src for src, chain in cfg.source_verifiers.items() if not chain}


# ----------------------------------------------------------------------------------------- pre-screen


def _student_model(cfg: RecipeConfig, folder: Path) -> tuple[str, Path | None]:
    """(model argument for the backend, folder to delete afterwards) of the screening student."""
    p = cfg.generate.prescreen
    if p.model is not None:
        return p.model, None
    student = cfg.train.student
    if student.keep_layers is None:
        return student.model, None
    from distillkit.student.build import auto_keep, build_student_init

    if auto_keep(student.keep_layers):
        raise DistillkitError(f"generate.prescreen: train.student.keep_layers={student.keep_layers!r} is chosen on "
                              "the kept traces, which do not exist before generation; set generate.prescreen.model "
                              "(e.g. the student's base model) or list the layers to keep")
    out = folder / "prescreen_student"
    build_student_init(student, out, teacher=cfg.generate.teacher.model)
    return str(out), out


def student_generate_config(cfg: RecipeConfig, model: str):
    """`generate` as the screening student runs it: its model, its samples, no prefill, no soft labels."""
    gen, p = cfg.generate, cfg.generate.prescreen
    v = gen.teacher.vllm
    vllm = v.model_copy(update={"data_parallel_size": 1, "max_model_len": p.max_model_len or v.max_model_len,
                                "tensor_parallel_size": p.tensor_parallel_size or v.tensor_parallel_size})
    return gen.model_copy(update={
        "teacher": gen.teacher.model_copy(update={"model": model, "backend": p.backend, "vllm": vllm}),
        "prompts": gen.prompts.model_copy(update={"prefill": None}),
        "sampling": gen.sampling.model_copy(update={
            "n": p.samples, "temperature": p.temperature, "top_p": p.top_p,
            "max_tokens": p.max_tokens or gen.sampling.max_tokens, "topk_logprobs": 0, "soft_labels": "topk"})})


def prescreen(cfg: RecipeConfig, prompts: list, folder: Path, config_hash: str,
              backend=None) -> tuple[list, dict[str, Any]]:
    """(the prompts to send to the teacher, stats) after the student's pre-screen; reuses a finished screen.

    `backend` (tests, benchmarks) replaces the student engine built from the config."""
    path = folder / PRESCREEN_FILE
    ids = [q.prompt_id for q in prompts]
    done = json.loads(path.read_text()) if path.exists() else None
    if done is None or done.get("config_hash") != config_hash or set(done["prompts"]) != set(ids):
        done = _screen(cfg, prompts, folder, config_hash, backend)
    kept = {pid for pid, row in done["prompts"].items() if row["kept"]}
    return [q for q in prompts if q.prompt_id in kept], done["stats"]


def _progress(total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from distillkit.progress import progress_bar

    progress = progress_bar(TextColumn("pre-screen"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                            TextColumn("ETA"), TimeRemainingColumn(), unit="prompts")
    return progress, progress.add_task("pre-screen", total=total)


def _screen(cfg: RecipeConfig, prompts: list, folder: Path, config_hash: str, backend) -> dict:
    from distillkit.engines import make_backend
    from distillkit.records import atomic_write_text
    from distillkit.verify.chain import Judge

    t0 = time.time()
    judge = Judge(verifiers_only(cfg.filter, CORRECTNESS))
    cleanup = None
    try:
        if backend is None:
            model, cleanup = _student_model(cfg, folder)
            if cleanup is not None:  # a derived student: name what it is, not the folder it ran from
                model = f"{cfg.train.student.model} (layers {cfg.train.student.keep_layers})"
            gen = student_generate_config(cfg, str(cleanup) if cleanup is not None else model)
            student = make_backend(gen)
        else:
            model, student = backend.model_id, backend
            gen = student_generate_config(cfg, model)
        try:
            correct, tokens = _count_correct(prompts, gen, student, judge, cfg.generate.shard_size)
        finally:
            if backend is None:
                student.close()
    finally:
        judge.close()
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
    rows, stats = _screen_outcome(cfg, prompts, correct, model, tokens, t0)
    log.info("generate: pre-screen by %s: the student solves %d of %d prompts; %d dropped", model, stats["solved"],
             len(prompts), stats["dropped"])
    done = {"config_hash": config_hash, "stats": stats, "prompts": rows}
    atomic_write_text(folder / PRESCREEN_FILE, json.dumps(done))
    return done


def _count_correct(prompts: list, gen, student, judge, size: int) -> tuple[dict[str, int], int]:
    """({prompt id: the student's correct answers}, completion tokens): the student answers the prompts `size` at a
    time and the correctness verifiers judge each answer."""
    from distillkit.generate.sampling import build_requests, to_records

    correct: dict[str, int] = {}
    tokens = 0
    unjudged = unjudged_sources(judge.cfg)
    progress, task = _progress(len(prompts))
    with progress:
        for start in range(0, len(prompts), size):
            chunk = prompts[start:start + size]
            requests = build_requests(chunk, gen, student.tokenizer, salt="#prescreen")
            rows = to_records(chunk, requests, student.generate(requests, gen.sampling), gen, student)
            ok = verified(judge, rows)
            for row, good in zip(rows, ok):
                good = bool(good) and (row.get("source") or "") not in unjudged
                correct[row["prompt_id"]] = correct.get(row["prompt_id"], 0) + int(good)
            tokens += sum(r["completion_tokens"] for r in rows)
            progress.advance(task, len(chunk))
    return correct, tokens


def _screen_outcome(cfg: RecipeConfig, prompts: list, correct: dict[str, int], model: str, tokens: int,
                    t0: float) -> tuple[dict, dict]:
    """(each prompt's row: correct answers, rate, solved, kept; the pre-screen's stats): prompts solved at
    `solved_at` are dropped, but for `keep_share` of them picked by a seeded order of their ids."""
    from distillkit.records import seeded_rank

    p = cfg.generate.prescreen
    rate = {q.prompt_id: correct.get(q.prompt_id, 0) / p.samples for q in prompts}
    solved = [q.prompt_id for q in prompts if rate[q.prompt_id] >= p.solved_at]
    keep = math.floor(p.keep_share * len(solved) + 0.5)
    kept_solved = set(sorted(solved, key=lambda pid: seeded_rank(cfg.seed, pid))[:keep])
    solved_set = set(solved)
    rows = {pid: {"correct": correct.get(pid, 0), "rate": r, "solved": pid in solved_set,
                  "kept": pid not in solved_set or pid in kept_solved} for pid, r in rate.items()}
    hist = Counter(round(r, 4) for r in rate.values())
    stats = {"model": model, "samples": p.samples, "solved_at": p.solved_at, "keep_share": p.keep_share,
             "prompts": len(prompts), "solved": len(solved), "dropped": len(solved) - len(kept_solved),
             "kept": len(prompts) - len(solved) + len(kept_solved),
             "mean_rate": round(sum(rate.values()) / len(rate), 4) if rate else 0.0,
             "histogram": {f"{r:g}": c for r, c in sorted(hist.items())},
             "student_tokens": tokens, "seconds": round(time.time() - t0, 2)}
    return rows, stats


# ----------------------------------------------------------------------------------------- resampling


def sample_until_verified(prompts: list, gen_cfg, backend, judge) -> list[dict]:
    """The records of one shard: n samples per prompt, then up to `resample.rounds` more rounds of n for the
    prompts with no verified sample yet (round r: seeds salted with r, sample indices from r * n); records
    carry their round and verdict in `meta`, grouped by prompt in prompt order."""
    from distillkit.generate.sampling import build_requests, to_records

    n, rounds = gen_cfg.sampling.n, gen_cfg.resample.rounds
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    todo = list(prompts)
    for r in range(rounds + 1):
        requests = build_requests(todo, gen_cfg, backend.tokenizer, salt=f"#round{r}" if r else "")
        rows = to_records(todo, requests, backend.generate(requests, gen_cfg.sampling), gen_cfg, backend,
                          first_index=r * n)
        ok = verified(judge, rows)
        solved = set()
        for row, good in zip(rows, ok):
            meta = json.loads(row["meta"])
            row["meta"] = json.dumps({**meta, "round": r, "verified": bool(good)}, sort_keys=True)
            by_prompt[row["prompt_id"]].append(row)
            if good:
                solved.add(row["prompt_id"])
        todo = [q for q in todo if q.prompt_id not in solved]
        if not todo:
            break
    return [row for q in prompts for row in by_prompt[q.prompt_id]]


def resample_stats(folder: Path, rounds: int) -> dict[str, Any]:
    """Per round: prompts sampled, prompts that got their first verified sample, samples and tokens."""
    import pyarrow.parquet as pq

    from distillkit.records import list_shards

    sampled: dict[int, set] = defaultdict(set)
    verified_in: dict[int, set] = defaultdict(set)
    samples: Counter = Counter()
    tokens: Counter = Counter()
    for shard in list_shards(folder):
        t = pq.read_table(shard, columns=["prompt_id", "meta", "completion_tokens"]).to_pydict()
        for pid, meta, n in zip(t["prompt_id"], t["meta"], t["completion_tokens"]):
            m = json.loads(meta or "{}")
            r = int(m.get("round", 0))
            sampled[r].add(pid)
            samples[r] += 1
            tokens[r] += n or 0
            if m.get("verified"):
                verified_in[r].add(pid)
    per_round = [{"round": r, "prompts": len(sampled[r]), "verified": len(verified_in[r]),
                  "samples": samples[r], "tokens": tokens[r]} for r in sorted(sampled)]
    ever = set().union(*verified_in.values()) if verified_in else set()
    return {"rounds": rounds, "per_round": per_round, "prompts": len(sampled[0]),
            "verified": len(ever), "never_verified": len(sampled[0] - ever)}
