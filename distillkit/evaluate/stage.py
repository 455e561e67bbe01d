"""The evaluate stage: teacher, student before and student after training, on the same tasks and protocol.

Writes to `<run>/evaluate/`:
    results/<model>.json          one model's scores (written as each model finishes: a rerun resumes)
    samples/<model>/<task>.jsonl  lm-eval's logged samples (prompts, k responses, per-question scores)
    results.json                  everything, plus the protocol used
    comparison.md                 the table a person reads
    manifest.json                 written last
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.faults import operation
from distillkit.records import Manifest, StageOutput, atomic_write_text, read_manifest
from distillkit.schemas.evaluate import (
    MODEL_LABELS,
    Baseline,
    EvalResults,
    ModelResult,
    Protocol,
    paired_text,
    task_lines,
)
from distillkit.stage_hash import stage_config_hash

log = logging.getLogger(__name__)


def model_paths(cfg: RecipeConfig) -> dict[str, str]:
    """Where each model of `evaluate.models` is; raises naming the stage to run when one is missing."""
    from distillkit.models import resolve_model

    train_dir = cfg.stage_dir("train")
    out: dict[str, str] = {}
    for key in cfg.evaluate.models:
        if key == "teacher":
            out[key] = resolve_model(cfg.generate.teacher.model)
        elif key == "student_before":
            # The train stage saves the initial student when it derives one (e.g. keep_layers);
            # otherwise the student starts as the configured model itself.
            init = train_dir / "student_init"
            if init.is_dir():
                out[key] = str(init)
            elif cfg.train.student.keep_layers is None:
                out[key] = resolve_model(cfg.train.student.model)
            else:
                raise DistillkitError(f"{init} is missing: the derived student (train.student.keep_layers="
                                      f"{cfg.train.student.keep_layers!r}) is saved by `distillkit train`; run it first")
        else:
            # model/ holds full weights or the merged adapter; without a merge, evaluate the adapter
            trained = next((p for p in (train_dir / "model", train_dir / "adapter") if p.is_dir()), None)
            if trained is None:
                raise DistillkitError(f"{train_dir / 'model'} is missing: run `distillkit train` first, or drop "
                                      "student_after from evaluate.models")
            out[key] = str(trained)
    return out


def _prefix_note(prefix: str | None) -> str:
    return f", answers forced to start with {prefix.strip()!r}" if prefix else ""


def comparison_markdown(results: EvalResults) -> str:
    """The comparison table: pass@1 (%) ± standard error per task and model, and the paired change."""
    models = results.model_keys()
    proto = results.protocol
    lines = [
        "# Evaluation",
        "",
        f"pass@1 in % ± standard error over questions; k={proto.num_samples} samples per question at "
        f"temperature {proto.temperature}, top-p {proto.top_p}, up to {proto.max_gen_toks} new tokens, "
        f"chat template applied{_prefix_note(proto.gen_prefix)} (backend: {proto.backend}).",
        "",
    ]
    both = "student_before" in models and "student_after" in models
    header = ["task", "questions"] + [MODEL_LABELS.get(m, m) for m in models] + (["after − before (paired)"] if both else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in results.task_names():
        scores = {m: results.score(m, task) for m in models}
        n = next((s.num_questions for s in scores.values() if s), 0)
        row = [task, str(n)] + [s.percent() if s else "–" for s in scores.values()]
        if both:
            row.append(paired_text(scores["student_after"], scores["student_before"]))
        lines.append("| " + " | ".join(row) + " |")
    passk = [(t, m, s.pass_at_k) for m in models for t, s in results.models[m].tasks.items() if s.pass_at_k is not None]
    if passk and proto.num_samples > 1:
        lines += ["", f"pass@{proto.num_samples} (at least one of the k samples correct), %: "
                  + "; ".join(f"{MODEL_LABELS.get(m, m)} {t} {100 * v:.1f}" for t, m, v in passk)]
    if results.baselines:
        lines += ["", "Constant-answer baseline (always the most common gold answer of these questions, chosen "
                  "in hindsight): " + "; ".join(f"{t} {100 * b.pass_at_1:.1f} (answer {b.answer!r})"
                                                for t, b in results.baselines.items())]
    lines += ["", "Models:"] + [f"- {MODEL_LABELS.get(m, m)}: `{results.models[m].model}`" for m in models]
    lines += task_lines(proto.task_info)
    return "\n".join(lines) + "\n"


def constant_baselines(folder: Path, model_keys: list[str], tasks: list[str]) -> dict[str, Baseline]:
    """{task: constant-answer baseline} from the first model's logged samples (all models share the questions)."""
    from distillkit.evaluate.protocol import constant_answer_baseline

    out = {}
    for task in tasks:
        for key in model_keys:
            path = folder / "samples" / key / f"{task}.jsonl"
            if path.exists():
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                baseline = constant_answer_baseline(rows)
                if baseline:
                    out[task] = Baseline(**baseline)
                break
    return out


def run_evaluate(cfg: RecipeConfig, overwrite: bool = False) -> Manifest:
    """Evaluate `evaluate.models` on `evaluate.tasks`; write results.json and comparison.md."""
    from distillkit.evaluate.harness import choose_backend, evaluate_model

    ecfg = cfg.evaluate
    folder = cfg.stage_dir("evaluate")
    config_hash = stage_config_hash(cfg, "evaluate")
    train_manifest = read_manifest(cfg.stage_dir("train"))
    inputs = {str(cfg.stage_dir("train")): train_manifest.config_hash} if train_manifest else {}
    out = StageOutput(folder, "evaluate", config_hash, config=ecfg.model_dump(mode="json"), inputs=inputs)
    if out.is_complete() and not overwrite:
        return out.manifest()
    if overwrite:
        for sub in ("results", "samples"):
            shutil.rmtree(folder / sub, ignore_errors=True)
        for name in ("results.json", "comparison.md"):
            (folder / name).unlink(missing_ok=True)
    out.begin(overwrite=overwrite)
    paths = model_paths(cfg)
    backend = choose_backend(ecfg.backend)
    gen_prefix = cfg.generate.prompts.prefill if ecfg.gen_prefix == "auto" else ecfg.gen_prefix
    protocol = Protocol(backend=backend, num_samples=ecfg.num_samples, temperature=ecfg.temperature,
                        top_p=ecfg.top_p, max_gen_toks=ecfg.max_gen_toks, limit=ecfg.limit, chat_template=True,
                        gen_prefix=gen_prefix or None, seed=cfg.seed, tasks=list(ecfg.tasks))
    models: dict[str, ModelResult] = {}
    for key, path in paths.items():
        done = folder / "results" / f"{key}.json"
        if done.exists():  # same config hash (begin() refused otherwise): this model is already scored
            models[key] = ModelResult.model_validate_json(done.read_text())
            log.info("evaluate: %s already scored, reusing %s", key, done)
            continue
        log.info("evaluate: %s (%s) on %s", key, path, ", ".join(ecfg.tasks))
        with operation(f"evaluate: {key} ({path})"):
            result = evaluate_model(path, ecfg, cfg.seed, folder / "samples" / key, backend, gen_prefix=gen_prefix)
        models[key] = ModelResult(model=path, **result)
        atomic_write_text(done, models[key].model_dump_json(indent=2) + "\n")
    protocol.task_info = next((m.task_info for m in models.values() if m.task_info), {})
    results = EvalResults(protocol=protocol, models=models,
                          baselines=constant_baselines(folder, list(models), ecfg.tasks))
    results.write(folder / "results.json")
    atomic_write_text(folder / "comparison.md", comparison_markdown(results))
    counts = {f"{key}/{task}": round(score.pass_at_1, 4) for key, m in models.items() for task, score in m.tasks.items()}
    stats = {key: {task: score.model_dump(exclude={"per_question"}) for task, score in m.tasks.items()}
             for key, m in models.items()}
    return out.finish(counts=counts, stats={"protocol": protocol.model_dump(mode="json"), "scores": stats},
                      versions=("distillkit", "torch", "transformers", "vllm", "lm_eval", "math_verify"))
