"""`distillkit compare`: does a method help? The recipe as several arms x training seeds, with honest intervals.

    compare/
      runs/<arm>/seed-<s>/     a normal run folder per arm and training seed (train.seed = s)
      shared/<stage>-<hash>/   generate / filter / score outputs, one per config: arms that differ in training
                               only link to the same teacher generation
      shared/evaluate-<hash>/  the teacher's and the untrained student's scores, evaluated once
      results.json             CompareResults: per arm and task the mean over seeds with its 95% interval (seed and
                               question variance), each arm minus the baseline paired by seed and question, the
                               per-seed values, the teacher and constant baselines
      comparison.md            the same as tables
      report.html              a chart of each arm's per-seed pass@1, mean and interval, with the tables

Every run is resumable as any run is (finished stages are skipped), so a killed compare continues where it
stopped. The statistics are in distillkit/evaluate/seeds.py.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from distillkit.config import RecipeConfig, apply_overrides, validate_recipe
from distillkit.errors import ConfigError, DistillkitError
from distillkit.evaluate.seeds import Interval
from distillkit.records import atomic_write_text, stable_hash

log = logging.getLogger(__name__)

UPSTREAM = ("generate", "filter", "score")
SHARED_MODELS = ("teacher", "student_before")


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmResult(_Schema):
    overrides: dict[str, Any]
    seeds_done: list[int]
    pass_at_1: dict[str, Interval] = Field(default_factory=dict)
    """task -> the arm's student_after pass@1 over seeds and questions."""
    vs_baseline: dict[str, Interval] = Field(default_factory=dict)
    """task -> this arm minus the baseline arm, paired by seed and question (absent for the baseline itself)."""
    seeds_needed: dict[str, Optional[int]] = Field(default_factory=dict)
    """task -> training seeds that would bring vs_baseline's interval to compare.target_half_width on the same
    questions (None: more than 100, or out of reach with these questions)."""
    vs_teacher: dict[str, Interval] = Field(default_factory=dict)
    """task -> this arm's students minus the teacher, paired by question (the teacher is one model: each seed's
    student is paired with it); present where the teacher was evaluated."""


class CompareResults(_Schema):
    baseline: str
    seeds: int
    target_half_width: float = 0.03
    num_samples: int
    arms: dict[str, ArmResult]
    reference: dict[str, dict[str, float]] = Field(default_factory=dict)
    """task -> {"teacher": pass@1, "student_before": ..., "constant answer": ...}."""
    warnings: list[str] = Field(default_factory=list)


def arm_configs(cfg: RecipeConfig) -> dict[str, list[RecipeConfig]]:
    """arm -> its run configs, one per training seed; every problem of every arm in one ConfigError."""
    c = cfg.compare
    if not c.arms:
        raise ConfigError(["compare.arms: no arms; give two or more, e.g. compare.arms={sft: {train.kd.enabled: "
                           "false}, kd: {}} in the recipe, or --arm sft:train.kd.enabled=false --arm kd"])
    base = cfg.model_dump(mode="json", exclude={"compare"})
    root = cfg.run_dir / "compare"
    out: dict[str, list[RecipeConfig]] = {}
    problems: list[str] = []
    for arm in c.arm_order():
        after = c.arms[arm].get("after")
        overrides = {k: v for k, v in c.arms[arm].items() if k != "after"}
        upstream = [k for k in overrides if k.split(".")[0] in UPSTREAM]
        if c.train_only and upstream:
            problems.append(f"compare.arms.{arm}: overrides {upstream}, but compare.train_only is set (the arms "
                            "share one teacher generation); drop those keys or set compare.train_only=false")
        if any(k.split(".")[0] in ("output_dir", "compare") for k in overrides) or "train.seed" in overrides:
            problems.append(f"compare.arms.{arm}: output_dir, train.seed and compare are set by compare itself")
            continue
        if after is not None and "train.student.model" in overrides:
            problems.append(f"compare.arms.{arm}: sets both `after` and train.student.model; `after: {after}` already "
                            f"starts it from {after}'s trained student")
            continue
        runs = []
        for seed in range(c.seeds):
            # `after`: this seed starts from the other arm's student of the same seed (already cut to its layers)
            start = [] if after is None else [f"train.student.model={json.dumps(str(_trained(root, after, seed)))}",
                                              "train.student.keep_layers=null"]
            try:
                data = apply_overrides(copy.deepcopy(base), [f"{k}={json.dumps(v)}" for k, v in overrides.items()]  # JSON is YAML
                                       + start
                                       + [f"train.seed={seed}", f"output_dir={root / 'runs' / arm / f'seed-{seed}'}"])
                runs.append(validate_recipe(data, source=f"compare.arms.{arm}"))
            except ConfigError as e:
                problems += [f"compare.arms.{arm}: {p}" for p in e.problems]
                break
        out[arm] = runs
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return out


def step_size_warnings(cfg: RecipeConfig, runs: dict[str, list[RecipeConfig]]) -> list[str]:
    """A warning per arm that continues another arm's student with on-policy distillation at (about) that arm's
    own learning rate: in the CPU lab that step size wrecked the SFT students (-27 and -47 points) where a tenth
    of it kept them (BENCHMARKS.md, "CPU lab")."""
    out = []
    for arm, arm_runs in runs.items():
        after = cfg.compare.arms[arm].get("after")
        if after is None or not arm_runs or not runs.get(after) or not arm_runs[0].train.on_policy.enabled:
            continue
        rate, before = arm_runs[0].train.learning_rate, runs[after][0].train.learning_rate
        if rate > before / 3:
            out.append(f"compare.arms.{arm}: on-policy distillation continues {after}'s students at learning rate "
                       f"{rate:g} ({after} trained at {before:g}); at the SFT rate it wrecked the CPU lab's SFT "
                       f"students (-27 and -47 points) and a tenth of it kept them (BENCHMARKS.md, \"CPU lab\"): "
                       f"add train.learning_rate={before / 10:g} to the arm")
    return out


def _trained(root: Path, arm: str, seed: int) -> Path:
    """Where arm's student of `seed` is saved (a run's train/model)."""
    return root / "runs" / arm / f"seed-{seed}" / "train" / "model"


def _link_upstream(run: RecipeConfig, shared: Path) -> None:
    """Point the run's generate/filter/score folders at one shared folder per stage config (made on first use)."""
    from distillkit.stage_hash import stage_config_hash

    for stage in UPSTREAM:
        if stage not in run.stages:
            continue
        target = shared / f"{stage}-{stage_config_hash(run, stage)}"
        target.mkdir(parents=True, exist_ok=True)
        link = run.stage_dir(stage)
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(target, link.parent), link)


def _evaluate_key(run: RecipeConfig, model: str) -> str:
    """What a teacher's or untrained student's score depends on: the model, the evaluation, the seed."""
    # student_init depends on the student settings and on the teacher whose special tokens it may adopt, not on
    # the training seed or the training hyperparameters (LoRA adapters are drawn later, at load)
    who = run.generate.teacher.model_dump(mode="json") if model == "teacher" else \
        {"student": run.train.student.model_dump(mode="json"), "teacher": run.generate.teacher.model,
         "label_teacher": run.label_teacher.model}
    return stable_hash({"model": model, "who": who, "evaluate": run.evaluate.model_dump(mode="json"),
                        "prefill": run.generate.prompts.prefill, "seed": run.seed})


def _share_scores(run: RecipeConfig, shared: Path, direction: str) -> None:
    """Copy the teacher's and student_before's per-model results between the run and the shared store."""
    results = run.stage_dir("evaluate") / "results"
    for model in SHARED_MODELS:
        if model not in run.evaluate.models:
            continue
        store = shared / f"evaluate-{_evaluate_key(run, model)}" / f"{model}.json"
        mine = results / f"{model}.json"
        if direction == "in" and store.exists() and not mine.exists():
            results.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store, mine)
        elif direction == "out" and mine.exists() and not store.exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(store, mine.read_text())


def run_compare(cfg: RecipeConfig, on_run: Optional[Callable[[str, int, int, int, float], None]] = None
                ) -> CompareResults:
    """Every arm x seed (skipping what is finished), then results.json, comparison.md and report.html.

    `on_run(arm, seed, done, total, eta_s)` reports progress."""
    from distillkit.pipeline import run_pipeline, stage_is_done

    runs = arm_configs(cfg)
    root = cfg.run_dir / "compare"
    shared = root / "shared"
    stages = [s for s in cfg.stages if s not in ("publish",)]
    if "evaluate" not in stages:
        raise DistillkitError("compare needs the evaluate stage in `stages` (it compares the arms' scores)")
    if "student_after" not in cfg.evaluate.models:
        raise DistillkitError("compare needs student_after in evaluate.models (the arms' trained students)")
    for w in step_size_warnings(cfg, runs):
        log.warning(w)
    if cfg.compare.seeds == 1:
        log.warning("compare.seeds=1: the intervals cover question sampling only, not seed-to-seed variance; use "
                    ">= 3 seeds before calling a difference an effect")
    # Seed-major (every arm's seed 0, then every arm's seed 1, ...; arms in dependency order within a seed): a sweep
    # stopped early still holds paired runs, and `--seeds` lower than planned collects them.
    todo = [(arm, seed, runs[arm][seed]) for seed in range(max(map(len, runs.values()), default=0))
            for arm in runs if seed < len(runs[arm])]
    t0, ran = time.time(), 0
    for done, (arm, seed, run) in enumerate(todo):
        run.stages = stages
        _link_upstream(run, shared)
        _share_scores(run, shared, "in")
        finished = stage_is_done(run, "evaluate")
        after = cfg.compare.arms[arm].get("after")
        if not finished and after is not None and not stage_is_done(runs[after][seed], "train"):
            raise DistillkitError(f"compare: arm {arm} seed {seed} starts from arm {after}'s student of seed {seed}, "
                                  f"which has not finished training ({_trained(root, after, seed)}); rerun compare")
        if not finished:
            log.info("compare: %s seed %d (%d of %d runs)", arm, seed, done + 1, len(todo))
            run_pipeline(run)
            ran += 1
        _share_scores(run, shared, "out")
        if on_run is not None:
            per_run = (time.time() - t0) / ran if ran else 0.0
            on_run(arm, seed, done + 1, len(todo), per_run * (len(todo) - done - 1))
    results = collect(cfg, runs)
    write(root, results)
    return results


def collect(cfg: RecipeConfig, runs: dict[str, list[RecipeConfig]]) -> CompareResults:
    """The table of every finished run: student_after per (arm, seed, question), intervals, references."""
    from distillkit.evaluate.seeds import arm_interval, paired_interval, paired_table, seeds_needed
    from distillkit.schemas.evaluate import EvalResults

    baseline = cfg.compare.baseline or next(iter(cfg.compare.arms))
    scores: dict[str, dict[str, dict[int, dict[str, float]]]] = {}  # arm -> task -> seed -> question -> pass@1
    teacher: dict[str, dict[str, float]] = {}  # task -> question -> the teacher's pass@1
    reference: dict[str, dict[str, float]] = {}
    num_samples = cfg.evaluate.num_samples
    for arm, seeds in runs.items():
        for seed, run in enumerate(seeds):
            res = EvalResults.read(run.stage_dir("evaluate"))
            if res is None:
                continue
            num_samples = res.protocol.num_samples
            for task in res.task_names():
                after = res.score("student_after", task)
                if after is not None:
                    scores.setdefault(arm, {}).setdefault(task, {})[seed] = dict(after.per_question)
                for model in SHARED_MODELS:
                    if (s := res.score(model, task)) is not None:
                        reference.setdefault(task, {})[model] = s.pass_at_1
                        if model == "teacher":
                            teacher.setdefault(task, dict(s.per_question))
                if (b := res.baselines.get(task)) is not None:
                    reference.setdefault(task, {})["constant answer"] = b.pass_at_1
    arms: dict[str, ArmResult] = {}
    warnings: list[str] = step_size_warnings(cfg, runs)
    for arm in cfg.compare.arms:  # as the recipe lists them (runs are in dependency order)
        by_task = scores.get(arm, {})
        seeds_done = sorted({s for per_seed in by_task.values() for s in per_seed})
        result = ArmResult(overrides=cfg.compare.arms[arm], seeds_done=seeds_done)
        for task, per_seed in by_task.items():
            result.pass_at_1[task] = arm_interval(per_seed)
            base = scores.get(baseline, {}).get(task)
            if arm != baseline and base:
                try:
                    result.vs_baseline[task] = paired_interval(per_seed, base)
                    if len(per_seed) > 1:
                        result.seeds_needed[task] = seeds_needed(paired_table(per_seed, base),
                                                                 cfg.compare.target_half_width)
                except ValueError as e:
                    warnings.append(f"{arm} vs {baseline} on {task}: {e}")
            if task in teacher:
                try:
                    result.vs_teacher[task] = paired_interval(per_seed, {s: teacher[task] for s in per_seed})
                except ValueError as e:
                    warnings.append(f"{arm} vs the teacher on {task}: {e}")
        if len(seeds_done) < cfg.compare.seeds:
            warnings.append(f"{arm}: {len(seeds_done)} of {cfg.compare.seeds} seeds finished; rerun compare to "
                            "finish the rest")
        arms[arm] = result
    if cfg.compare.seeds == 1:
        warnings.append("one training seed: the intervals include no seed-to-seed variance")
    return CompareResults(baseline=baseline, seeds=cfg.compare.seeds, target_half_width=cfg.compare.target_half_width,
                          num_samples=num_samples, arms=arms, reference=reference, warnings=warnings)


def comparison_markdown(results: CompareResults) -> str:
    """Per task: each arm's mean ± 95% interval, its difference from the baseline, and the per-seed values."""
    lines = []
    tasks = list(dict.fromkeys(t for a in results.arms.values() for t in a.pass_at_1))
    for task in tasks:
        lines += [f"### {task}", "",
                  f"pass@1 of the trained student in points, mean over training seeds ± the half-width of its 95% "
                  f"interval (seed and question variance; {results.num_samples} samples per question). The "
                  f"difference is paired by seed and question with `{results.baseline}`; vs teacher: each seed's "
                  f"student minus the teacher, paired by question.", "",
                  "| arm | pass@1 | vs baseline | vs teacher | per seed | seeds x questions |",
                  "|---|---|---|---|---|---|"]
        for arm, r in results.arms.items():
            iv, d = r.pass_at_1.get(task), r.vs_baseline.get(task)
            diff = "(baseline)" if arm == results.baseline else d.text(signed=True) if d else "–"
            if d is not None and d.low <= 0 <= d.high:
                diff += " (no effect measurable)"
            if task in r.seeds_needed and d is not None and d.half_width > results.target_half_width:
                n = r.seeds_needed[task]
                diff += (f"; ±{100 * results.target_half_width:.0f} needs {n} seeds" if n else
                         f"; ±{100 * results.target_half_width:.0f} out of reach on these questions")
            t = r.vs_teacher.get(task)
            vs_teacher = t.text(signed=True) if t else "–"
            per_seed = ", ".join(f"{100 * v:.1f}" for v in iv.per_seed) if iv else "–"
            size = f"{iv.seeds} x {iv.questions}" if iv else "–"
            lines.append(f"| {arm} | {iv.text() if iv else '–'} | {diff} | {vs_teacher} | {per_seed} | {size} |")
        ref = results.reference.get(task, {})
        if ref:
            lines += ["", "Reference: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in ref.items()) + "."]
        lines.append("")
    for w in results.warnings:
        lines.append(f"- warning: {w}")
    return "\n".join(lines).rstrip() + "\n"


def write(root: Path, results: CompareResults) -> None:
    from distillkit.publish.report import build_compare_report

    atomic_write_text(root / "results.json", results.model_dump_json(indent=2) + "\n")
    atomic_write_text(root / "comparison.md", comparison_markdown(results))
    build_compare_report(root)
