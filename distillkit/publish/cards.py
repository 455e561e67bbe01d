"""Model and dataset cards: rendered from the templates in `distillkit/publish/templates/` and checked
by parsing them back with huggingface_hub's `ModelCard` / `DatasetCard`.

The templates' source of truth for readers is `data_cards/` at the repository root; the package
ships an identical copy (a test keeps the two equal) because an installed distillkit has no
repository around it.

`RepoCard.validate()` asks the Hub's API, which is unreachable offline; here validation parses the
rendered text back through huggingface_hub's own card classes and checks the metadata a Hub page
and its leaderboard read (license, base_model, datasets, model-index). The Hub checks again on push.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.records import Manifest
from distillkit.schemas.evaluate import EvalResults, task_lines
from distillkit.schemas.train import TrainStats

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).with_name("templates")
MODEL_TEMPLATE = TEMPLATES_DIR / "model_card.md"
DATASET_TEMPLATE = TEMPLATES_DIR / "dataset_card.md"

# Hub ids of distillkit's builtin models, so cards can name a real base model.
BUILTIN_HUB_IDS = {"builtin:smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TAGS = ["distillkit", "distillation", "reasoning", "math"]


def hub_id(spec: str | None) -> str | None:
    """The Hub repo id behind a model argument, or None for a local folder / file."""
    if not spec:
        return None
    if spec in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[spec]
    return spec if _REPO_ID.match(spec) and not Path(spec).exists() else None


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


# ----------------------------------------------------------------------------------------- model card


def eval_results_for(results: EvalResults | None, model_key: str = "student_after") -> list:
    """model-index entries (huggingface_hub EvalResult) of one evaluated model: pass@1 in % per task."""
    from huggingface_hub import EvalResult

    if not results or model_key not in results.models:
        return []
    proto = results.protocol
    return [EvalResult(
        task_type="text-generation", task_name="Text Generation",
        dataset_type=task, dataset_name=task,
        metric_type="pass@1", metric_value=round(100 * score.pass_at_1, 2),
        metric_name=f"pass@1 (%), k={proto.num_samples}, T={proto.temperature}, top-p={proto.top_p}",
    ) for task, score in results.models[model_key].tasks.items()]


def _eval_table(results: EvalResults | None, teacher_label: str = "teacher") -> str:
    if not results:
        return "Not evaluated."
    labels = {"teacher": teacher_label, "student_before": "student before training", "student_after": "this model"}
    models = [m for m in results.model_keys() if m in labels]
    lines = ["| task | " + " | ".join(labels[m] for m in models) + " |", "|---|" + "---|" * len(models)]
    for task in results.task_names():
        scores = [results.score(m, task) for m in models]
        cells = [s.percent() if s else "–" for s in scores]
        n = next(s.num_questions for s in scores if s)
        lines.append(f"| {task} ({n} questions) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mixture_rows(train_stats: TrainStats | None) -> list[dict[str, Any]]:
    """One row per source of the training mixture (train manifest `stats.mixture`), or none."""
    mixture = (train_stats.mixture if train_stats is not None else None) or {}
    def kind(part: dict[str, Any]) -> str:
        fmt = part.get("reasoning_format")
        label = part["kind"].replace("_", "-")
        if fmt == "empty":
            return label + " (after an empty reasoning block)"
        return label + " (answer alone)" if fmt == "none" else label

    return [{"name": name, "kind": kind(part), "samples": part["samples"],
             "available": part["available"], "sample_share": _pct(part.get("sample_share")),
             "tokens": part["tokens"], "token_share": _pct(part["token_share"])}
            for name, part in mixture.items()]


def _teacher_probs_text(cfg: RecipeConfig) -> str:
    """Where the KD soft labels came from, as the card's objective row says it."""
    t = cfg.train
    teacher_probs = {"topk_tail": "stored top-{k} + tail bucket", "topk_renorm": "stored top-{k}, renormalized",
                     "sampled": "stored sampled labels, {k} draws per token", "live": "live teacher, full vocabulary",
                     "served": "served teacher's top-{k} + tail bucket"}[t.kd.teacher_probs]
    if "score" in cfg.stages and t.kd.teacher_probs in ("topk_tail", "topk_renorm", "sampled"):
        return teacher_probs.format(k=cfg.score.label_width) + f", scored by {cfg.score.teacher.model}"
    k = t.kd.teacher_server.topk if t.kd.teacher_probs == "served" else cfg.generate.label_width
    return teacher_probs.format(k=k)


def _train_stats_rows(train_stats: TrainStats, processes: int) -> list[tuple[str, Any]]:
    """The training table's rows read from the train manifest: throughput, how it ran, special-token changes."""
    rows = []
    for key in ("tokens_seen", "tokens_per_s", "train_seconds", "final_train_loss"):
        rows.append((key.replace("_", " "), getattr(train_stats, key)))
    d = train_stats.distributed or {}
    kind = {"NO": "one process", "MULTI_CPU": "DDP (gloo)", "MULTI_GPU": "DDP", "FSDP": "FSDP",
            "DEEPSPEED": "DeepSpeed"}.get(d.get("type"), d.get("type", "one process"))
    if d.get("fsdp_version"):
        kind += f"{d['fsdp_version']}"
    rows.append(("ran as", f"{kind} over {processes} process{'es' if processes != 1 else ''}, "
                           f"{'bf16 autocast' if train_stats.bf16 else 'fp32'}"
                           + (f", mixed precision {d['mixed_precision']}" if d.get("mixed_precision") not in
                              (None, "no") else "")))
    adopted = train_stats.student_init.get("adopted_rows") or []
    if adopted:
        moved = "; ".join(f"{r['id']} `{r['was']}` -> `{r['now']}` ({r['init']})" for r in adopted)
        rows.append(("special tokens", f"the teacher's, adopted as DeepSeek's distilled students did: {moved}"))
    mapped = [m for m in (train_stats.student_init.get("special_map") or {}).get("pairs", [])
              if m["teacher_id"] != m["student_id"]]
    if mapped:
        moved = "; ".join(f"`{m['teacher']}` {m['teacher_id']} -> `{m['student']}` {m['student_id']} ({m['how']})"
                          for m in mapped)
        rows.append(("special tokens", f"the student's own; the teacher's mapped onto them by role: {moved}"))
    return rows


def _context_override(cfg: RecipeConfig) -> str | None:
    """The student's RoPE and context overrides as "key=value, ..." (`train.student`), or None without any."""
    st = cfg.train.student
    if not (st.rope_theta is not None or st.rope_scaling or st.max_position_embeddings):
        return None
    return ", ".join(f"{k}={v}" for k, v in (("rope_theta", st.rope_theta),
                                             ("rope_scaling", st.rope_scaling),
                                             ("max_position_embeddings", st.max_position_embeddings)) if v)


def _limitations(cfg: RecipeConfig, base: str | None, context: str | None) -> list[str]:
    """The card's limitations: a local starting model, kept layers, an extended context."""
    t = cfg.train
    limitations = []
    if base is None:
        limitations.append(f"The student started from a local model (`{t.student.model}`), not a Hub model.")
    if t.student.keep_layers is not None:
        limitations.append(f"The student kept only some of its base model's layers ({t.student.keep_layers}); "
                           "it is a new architecture size, not a fine-tune of the full base model.")
    if context is not None:
        limitations.append(f"The student's context was extended before training ({context}); its base model was "
                           "made for a shorter one.")
    return limitations


def _training_rows(cfg: RecipeConfig, kd: str, context: str | None,
                   train_stats: TrainStats | None) -> list[tuple[str, Any]]:
    """The training table: the recipe's settings, then what the train manifest measured (`_train_stats_rows`)."""
    t = cfg.train
    processes = (train_stats.distributed or {}).get("num_processes", train_stats.num_processes) if train_stats else 1
    rows = [("method", t.method), ("objective", kd), ("learning rate", t.learning_rate),
            ("epochs", t.num_train_epochs),
            ("effective batch", t.per_device_train_batch_size * t.gradient_accumulation_steps * processes),
            ("max length", t.max_length)]
    if t.method != "full":
        rows.append(("LoRA", f"r={t.lora.r}, alpha={t.lora.alpha}, targets={t.lora.target_modules}"))
    if context is not None:
        rows.append(("context override", context))
    if train_stats is not None:
        rows += _train_stats_rows(train_stats, processes)
    return rows


def teacher_context(cfg: RecipeConfig, generate_manifest: Manifest | None, filter_manifest: Manifest | None,
                    results: EvalResults | None = None) -> dict[str, Any]:
    """The cards' per-teacher section of a run with `generate.teachers` (distillkit/publish/teachers.py): the rows,
    the intro naming every teacher, and which teacher the evaluation scored. Empty rows for one teacher."""
    from distillkit.publish.teachers import SCORE_NOTE, teacher_rows, teachers_intro

    if not cfg.generate.teachers:
        return {"teachers": [], "teachers_intro": "", "teachers_note": ""}
    if generate_manifest is None:
        from distillkit.records import read_manifest

        generate_manifest = read_manifest(cfg.stage_dir("generate"))
    rows = teacher_rows(cfg.generate.model_dump(mode="json"), generate_manifest, filter_manifest, results,
                        cfg.stage_dir("generate"), model_label=lambda spec: hub_id(spec) or spec)
    first = rows[0]
    return {"teachers": rows, "teachers_intro": teachers_intro(rows),
            "teachers_note": SCORE_NOTE.format(name=first["name"], model=first["model"])}


def render_model_card(cfg: RecipeConfig, results: EvalResults | None = None, repo_id: str | None = None,
                      files_summary: str = "", train_manifest: Manifest | None = None,
                      filter_manifest: Manifest | None = None):
    """The student's model card (huggingface_hub ModelCard), metadata and text."""
    from huggingface_hub import ModelCard, ModelCardData

    t = cfg.train
    repo_id = repo_id or cfg.publish.model_repo or f"your-name/{cfg.name}"
    base = hub_id(t.student.model)
    teacher = hub_id(cfg.generate.teacher.model) or cfg.generate.teacher.model
    kd = (f"soft-label KD ({t.kd.divergence}, {_teacher_probs_text(cfg)}, alpha={t.kd.alpha}, T={t.kd.temperature}) "
          "+ cross-entropy" if t.kd.enabled else "supervised fine-tuning (cross-entropy)")
    method_summary = f"{t.method} training, {kd}" + (", on-policy" if t.on_policy.enabled else "")
    train_stats = TrainStats.of(train_manifest)
    context = _context_override(cfg)
    limitations = _limitations(cfg, base, context)
    rows = _training_rows(cfg, kd, context, train_stats)
    mixture = _mixture_rows(train_stats)
    data_summary = ""
    if filter_manifest is not None:
        c = filter_manifest.counts
        data_summary = (f"{c.get('kept', '?')} of {c.get('input', '?')} teacher samples kept after filtering "
                        f"({c.get('prompts_kept', '?')} of {c.get('prompts_input', '?')} prompts).")
    routed = teacher_context(cfg, None, filter_manifest, results)
    data = ModelCardData(
        base_model=base, datasets=[cfg.publish.dataset_repo] if cfg.publish.dataset_repo else None,
        license=cfg.publish.license, tags=TAGS + ["r1-distillation"],
        library_name="transformers", pipeline_tag="text-generation",
        model_name=repo_id.split("/")[-1], eval_results=eval_results_for(results) or None,
    )
    proto = results.protocol if results else None
    e = cfg.evaluate
    return ModelCard.from_template(
        data, template_path=str(MODEL_TEMPLATE),
        model_name=repo_id.split("/")[-1], repo_id=repo_id, teacher=teacher,
        student=base or t.student.model, method_summary=method_summary,
        num_samples=proto.num_samples if proto else e.num_samples,
        temperature=proto.temperature if proto else e.temperature,
        top_p=proto.top_p if proto else e.top_p, max_gen_toks=proto.max_gen_toks if proto else e.max_gen_toks,
        backend=proto.backend if proto else e.backend,
        eval_table=_eval_table(results, f"teacher ({routed['teachers'][0]['name']})" if routed["teachers"] else "teacher"),
        task_lines="\n".join(task_lines(proto.task_info) if proto else []),
        gen_prefix_note=(f", answers forced to start with `{proto.gen_prefix.strip()}`"
                         if proto and proto.gen_prefix else ""),
        dataset_repo=cfg.publish.dataset_repo, data_summary=data_summary, mixture=mixture, training_rows=rows,
        files_summary=files_summary, limitations=limitations, **routed,
    )


def validate_model_card(text: str, expected_eval: int | None = None) -> Any:
    """Parse a model card back with huggingface_hub and check its metadata; returns the ModelCard."""
    from huggingface_hub import ModelCard

    problems = []
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except Exception as e:  # huggingface_hub raises ValueError subclasses for bad YAML / model-index
        raise DistillkitError(f"model card does not parse: {e}") from e
    d = card.data
    if not d.license:
        problems.append("license is missing (set publish.license)")
    if d.base_model is not None and not all(_REPO_ID.match(b) for b in ([d.base_model] if isinstance(d.base_model, str) else d.base_model)):
        problems.append(f"base_model={d.base_model!r} is not a Hub repo id")
    if not d.tags or "distillkit" not in d.tags:
        problems.append("tags lack 'distillkit'")
    if expected_eval is not None and len(d.eval_results or []) != expected_eval:
        problems.append(f"model-index holds {len(d.eval_results or [])} results, expected {expected_eval}")
    for r in d.eval_results or []:
        if not isinstance(r.metric_value, (int, float)):
            problems.append(f"eval result {r.dataset_name}: metric_value {r.metric_value!r} is not a number")
    if not card.text.strip():
        problems.append("card has no text")
    if problems:
        raise DistillkitError("model card: " + "; ".join(problems))
    return card


# ----------------------------------------------------------------------------------------- dataset card


def _funnel_rows(filter_manifest: Manifest | None) -> list[dict[str, Any]]:
    """The funnel with each step's rejection reasons, most frequent first (passes are not rejections)."""
    from distillkit.schemas.filter import FilterStats

    stats = FilterStats.of(filter_manifest)
    if stats is None:
        return []
    rows = []
    for row in stats.funnel:
        rejected = stats.counts(row.step, "rejected")
        text = ", ".join(f"{r} {c}" for r, c in sorted(rejected.items(), key=lambda kv: -kv[1])[:6])
        rows.append({**row.model_dump(by_alias=True), "reasons": text or "–"})
    return rows


def _decontamination_text(cfg: RecipeConfig, funnel: list[dict[str, Any]]) -> str:
    dc = cfg.filter.decontaminate
    if not dc.enabled:
        return ("Not applied: prompts were not checked for overlap with evaluation benchmarks. "
                "Do not evaluate models trained on this data on benchmarks its prompts may contain.")
    names = [b.hub_dataset or b.path for b in dc.benchmarks] or ["(none listed)"]
    removed = sum(r["rejected"] for r in funnel if "contam" in r["step"])
    return (f"Prompts sharing any {dc.ngram}-word n-gram with a problem of {', '.join(map(str, names))} "
            f"were removed ({removed} records).")


_ISOLATION = {"bwrap": "bubblewrap (no network; a read-only view of the system, a private writable folder)",
              "unshare": "Linux namespaces (no network, own pid namespace; the host file system visible)",
              "unshare-user": "Linux user namespaces (no network, own pid namespace; the host file system visible)"}


def _code_sandbox_text(filter_manifest: Manifest | None) -> str:
    """How the code verifier's runs were isolated, from the manifest ("" when no code was run)."""
    from distillkit.schemas.filter import FilterStats

    stats = FilterStats.of(filter_manifest)
    modes = sorted({v["isolation"] for s, v in (stats.verifiers.items() if stats else []) if "isolation" in v})
    if not modes:
        return ""
    if "none" in modes:
        return ("Code answers were run against their tests WITHOUT network or file-system isolation "
                "(the recipe set `allow_unisolated: true` on a machine where no sandbox worked): the generated "
                "code could reach the network and the file system of the machine that filtered it.")
    return "Code answers were run against their tests in a sandbox: " + "; ".join(_ISOLATION.get(m, m) for m in modes) + "."


def render_dataset_card(cfg: RecipeConfig, generate_manifest: Manifest | None, filter_manifest: Manifest | None,
                        has_rejected: bool = False, repo_id: str | None = None):
    """The trace dataset's card (huggingface_hub DatasetCard)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    g = cfg.generate
    fc = (filter_manifest.counts if filter_manifest else {}) or {}
    gc = (generate_manifest.counts if generate_manifest else {}) or {}
    num_generated = fc.get("input", gc.get("records", "?"))
    num_kept = fc.get("kept", num_generated)
    teacher = hub_id(g.teacher.model) or g.teacher.model
    repo_id = repo_id or cfg.publish.dataset_repo or f"your-name/{cfg.name}-traces"
    p = g.prompts
    prompt_source = (p.hub_dataset and f"Hub dataset `{p.hub_dataset}` ({p.split})") or \
        (p.builtin and f"built-in `{p.builtin}` {p.builtin_args}") or (p.path and f"local file `{Path(p.path).name}`") or "?"
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]
    if has_rejected:
        configs.append({"config_name": "rejected", "data_files": [{"split": "train", "path": "rejected/train-*.parquet"}]})
    sel = cfg.filter.selection
    selection = {"all": "every passing sample", "max_k": f"at most {sel.k} passing samples per prompt",
                 "shortest": "the shortest passing sample per prompt"}[sel.policy]
    if sel.min_pass_rate > 0 or sel.max_pass_rate < 1:
        selection += f"; prompts kept when the teacher's pass rate is in [{sel.min_pass_rate}, {sel.max_pass_rate}]"
    if sel.bins is not None:
        selection += "; of the prompts in each pass-rate bin " + ", ".join(
            f"[{lo:g}, {hi:g}{']' if hi == 1 else ')'}: {share:.0%}" for lo, hi, share in zip(sel.bins, sel.bins[1:], sel.bin_shares))
    funnel = _funnel_rows(filter_manifest)
    data = DatasetCardData(
        license=cfg.publish.license, pretty_name=f"{cfg.name} reasoning traces",
        task_categories=["text-generation"], language=["en"],
        size_categories=[_size_category(num_kept if isinstance(num_kept, int) else 0)],
        tags=TAGS + ["synthetic", "reasoning-traces"], configs=configs,
        source_datasets=[p.hub_dataset] if p.hub_dataset else None,
    )
    s = g.sampling
    sampling_rows = [("samples per prompt (n)", s.n), ("temperature", s.temperature), ("top-p", s.top_p),
                     ("max new tokens", s.max_tokens), ("seed", s.seed),
                     ("soft labels", f"{s.soft_label_samples} sampled draws per token" if s.soft_labels == "sampled"
                      else f"top-{s.topk_logprobs} logprobs" if s.topk_logprobs else "none")]
    sampling_rows += _curation_rows(g, (generate_manifest.stats if generate_manifest else {}) or {})
    routed = teacher_context(cfg, generate_manifest, filter_manifest, load_eval_results(cfg) if g.teachers else None)
    return DatasetCard.from_template(
        data, template_path=str(DATASET_TEMPLATE),
        pretty_name=data.pretty_name, repo_id=repo_id, teacher=teacher, backend=g.teacher.backend,
        sampling_rows=sampling_rows, prompt_source=prompt_source,
        prompt_template=p.template.replace("\n", "\\n"), prefill=(p.prefill or "").replace("\n", "\\n"),
        num_generated=num_generated, num_prompts=fc.get("prompts_input", gc.get("prompts", "?")),
        num_kept=num_kept, num_prompts_kept=fc.get("prompts_kept", "?"), num_rejected=fc.get("rejected", 0),
        has_rejected=has_rejected, funnel=funnel, selection=selection,
        decontamination=_decontamination_text(cfg, funnel), has_soft_labels=g.label_width > 0,
        packed_soft_labels=g.label_format == "packed-v1", sampled_soft_labels=g.label_format == "sampled-v1",
        code_sandbox=_code_sandbox_text(filter_manifest), **routed,
    )


def _curation_rows(g, stats: dict) -> list[tuple[str, str]]:
    """Rows for the student's pre-screen and resampling until verified (generate.prescreen / resample)."""
    rows = []
    if g.prescreen.enabled:
        p, st = g.prescreen, stats.get("prescreen") or {}
        text = f"{p.samples} student samples per prompt; solved at >= {p.solved_at:.0%} correct; {p.keep_share:.0%} of solved kept"
        if st:
            text = (f"{hub_id(st['model']) or st['model']}: {text}; solved {st['solved']} of {st['prompts']} prompts, "
                    f"{st['dropped']} dropped before the teacher sampled")
        rows.append(("student pre-screen", text))
    if g.resample.rounds:
        st = stats.get("resample") or {}
        text = f"up to {g.resample.rounds} more rounds of n samples for prompts with no verified sample"
        if st:
            text += "; " + ", ".join(f"round {r['round']}: {r['prompts']} prompts, {r['verified']} verified"
                                     for r in st["per_round"]) + f"; never verified {st['never_verified']}"
        rows.append(("resampling until verified", text))
    return rows


def validate_dataset_card(text: str, folder: Path | None = None) -> Any:
    """Parse a dataset card back and check its metadata; with `folder`, every config's files must exist."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard(text, ignore_metadata_errors=False)
    except Exception as e:
        raise DistillkitError(f"dataset card does not parse: {e}") from e
    d = card.data.to_dict()
    problems = [f"{key} is missing" for key in ("license", "pretty_name", "size_categories", "configs") if not d.get(key)]
    if folder is not None:
        for config in d.get("configs") or []:
            for entry in config["data_files"]:
                if not list(Path(folder).glob(entry["path"])):
                    problems.append(f"config {config['config_name']!r}: no file matches {entry['path']}")
    if problems:
        raise DistillkitError("dataset card: " + "; ".join(problems))
    return card


def load_eval_results(cfg: RecipeConfig) -> EvalResults | None:
    """The evaluate stage's results of this run (None before it ran), read through its schema."""
    return EvalResults.read(cfg.stage_dir("evaluate"))
