"""`preflight`: every check for the stages about to run, each tokenizer and model config loaded once."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Iterable, Optional

from distillkit.errors import DistillkitError
from distillkit.models import load_tokenizer_and_config
from distillkit.preflight.context import check_context, check_teacher_context
from distillkit.preflight.pair import check_cross_tokenizer, check_pair, check_trace_roundtrip
from distillkit.preflight.settings import check_distributed, check_eval_tasks, check_report_to, check_soft_labels
from distillkit.preflight.student import _after_train_fixes, check_tokenizer_mode, student_after_init
from distillkit.registry import load_backend
from distillkit.tokenizer_checks import (
    Finding,
    Severity,
    check_chat_template,
    check_eos,
    check_think_tokens,
    check_tokenizer,
)


log = logging.getLogger(__name__)


def preflight(cfg, stages: Optional[Iterable[str]] = None) -> list[Finding]:
    """All findings for the stages about to run (default: the recipe's `stages`).

    generate: the teacher's template, EOS and think tokens (when the backend renders prompts locally;
    an OpenAI endpoint applies its own template, so an unavailable tokenizer is only a warning).
    train: the student's template, trained turn, EOS/pad, think tokens, generation markers, judged
    after the fixes the train stage applies; with KD or on-policy distillation, vocab compatibility.
    """
    stages = list(cfg.stages if stages is None else stages)
    findings: list[Finding] = []
    models = _Models(findings)
    teacher_spec = cfg.generate.teacher.model
    if "generate" in stages:
        _check_teacher(cfg, models, findings)
    if "train" in stages:
        _check_training(cfg, stages, models, findings)
    elif "generate" in stages:
        findings += check_context(cfg, stages, None, _config_only(models.loaded, teacher_spec))
    if "evaluate" in stages:
        findings += check_eval_tasks(cfg.evaluate)
    for f in findings:
        # the caller shows the findings (the CLI prints them once); the debug log keeps a record
        log.debug("preflight %s", f)
    return findings


class _Models:
    """Tokenizers and model configs by spec, each loaded once per preflight; a load that fails is kept as its error
    and, when `load` asked for it, becomes a `tokenizer_load` finding."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        self.loaded: dict[str, Any] = {}

    def get(self, spec: str):
        """(tokenizer, config), or the DistillkitError loading them raised; no finding."""
        if spec not in self.loaded:
            try:
                self.loaded[spec] = load_tokenizer_and_config(spec)
            except DistillkitError as e:
                self.loaded[spec] = e
        return self.loaded[spec]

    def load(self, spec: str, subject: str, severity: Severity, why: str):
        """(tokenizer, config), or (None, None) with a `tokenizer_load` finding of `severity`."""
        result = self.get(spec)
        if isinstance(result, DistillkitError):
            self.findings.append(Finding("tokenizer_load", severity, f"{subject} {spec!r}: "
                                         f"{getattr(result, 'what', result)} {why}".rstrip(),
                                         getattr(result, "fix", None)
                                         or "check the model name/path (and network access for a Hub id)", subject))
            return None, None
        return result


def _check_teacher(cfg, models: _Models, findings: list[Finding]) -> None:
    """generate: the teacher's template, EOS and think tokens; with `generate.teachers`, each routed teacher's (its
    context too), each finding naming the teacher ("teacher r1")."""
    gen = cfg.generate
    if not gen.teachers:
        _check_one_teacher(gen, models, findings, "teacher")
        return
    for t in gen.teachers:
        own = gen.for_teacher(t.name)
        config = _check_one_teacher(own, models, findings, f"teacher {t.name}")
        key = f"generate.teachers[{t.name}]"
        findings += check_teacher_context(own, config, key, f"{key}.sampling" if "max_tokens" in t.sampling
                                          else "generate.sampling", f"teacher {t.name}")


def _check_one_teacher(gen, models: _Models, findings: list[Finding], subject: str):
    """One teacher's template, EOS and think tokens (`gen`: its single-teacher section); returns its model config
    (None when not loaded)."""
    teacher_spec = gen.teacher.model
    # the backend class says what it needs: the teacher's tokenizer where it renders prompts here (vLLM,
    # transformers, an OpenAI `completions` api); how its text treats special tokens
    backend = load_backend(gen.teacher.backend)
    needs = backend.renders_prompt_locally(gen.teacher)
    why = "" if needs else ("The teacher's endpoint applies its own template, so the teacher's template and "
                            "think-token checks are skipped.")
    tok, config = models.load(teacher_spec, subject, "error" if needs else "warning", why)
    if tok is not None:
        named = f"{subject} {teacher_spec}"
        own = [check_chat_template(tok, named), check_eos(tok, config, is_eos_trained=False, subject=named),
               # a special <think> vanishes from text decoded with skip_special_tokens (vLLM, servers)
               check_think_tokens(tok, named, "error" if backend.skips_special_tokens else "warning")]
        if not needs:  # the server renders the prompt: a missing local template does not matter
            own = [Finding(f.check, "warning", f.message, f.fix, f.subject) if f.severity == "error"
                   and f.check == "chat_template" else f for f in own]
        findings += [replace(f, subject=subject) for f in own]
    return config


def _check_training(cfg, stages: list[str], models: _Models, findings: list[Finding]) -> None:
    """train: loggers, the accelerate config, the student's tokenizer after student_init, the pair's vocabularies,
    lengths, stored soft labels."""
    report = check_report_to(cfg.train.report_to)
    if report is not None:
        findings.append(replace(report, subject="train"))
    findings += check_distributed(cfg.train)
    student_spec = cfg.train.student.model
    s_tok, s_config = models.load(student_spec, "student", "error", "")
    needs_teacher = cfg.train.kd.enabled or cfg.train.on_policy.enabled
    label_spec, t_tok, t_config = _label_teacher(cfg, models, needs_teacher)
    fixed = None
    mapped = False  # the student keeps its special tokens; the teacher's are mapped onto them by role
    if s_tok is not None:
        fixed, mapped = _check_student(cfg, s_tok, s_config, t_tok, label_spec, findings)
    if needs_teacher and fixed is not None and t_tok is not None and not mapped:
        findings += _check_vocabularies(cfg, t_tok, fixed, t_config, s_config, label_spec)
    if needs_teacher and fixed is not None and not mapped:
        findings += _check_other_teachers(cfg, models, fixed, s_config, label_spec)
    teacher_spec = cfg.generate.teacher.model
    findings += check_context(cfg, stages, s_config, t_config if t_tok is not None and label_spec == teacher_spec
                              else _config_only(models.loaded, teacher_spec))
    soft = check_soft_labels(cfg, stages)
    if soft is not None:
        findings.append(soft)


def _label_teacher(cfg, models: _Models, needs_teacher: bool):
    """(spec, tokenizer, config) of the teacher whose ids the soft labels are on; tokenizer and config are None when
    not needed or not loadable."""
    # whose ids the soft labels are on: the scoring teacher with a score stage, a served teacher's model
    kd = cfg.train.kd
    label_spec = (kd.teacher_server.model if kd.teacher_probs == "served" and kd.teacher_server.model
                  else cfg.label_teacher.model)
    t_tok = t_config = None
    if needs_teacher:
        t_tok, t_config = models.load(label_spec, "teacher", "warning",
                                      "Vocab compatibility for KD cannot be checked before training.")
    elif cfg.train.student.tokenizer != "own":  # only to see whether the student adopts its tokens
        result = models.get(label_spec)
        if isinstance(result, tuple):
            t_tok, t_config = result
    return label_spec, t_tok, t_config


def _check_student(cfg, s_tok, s_config, t_tok, label_spec: str, findings: list[Finding]):
    """The student's checks as student_init/ will hold it, and the tokenizer mode of the pair; returns (the student's
    tokenizer after student_init or None when it cannot be built, whether the teacher's special ids are mapped)."""
    student_spec = cfg.train.student.model
    subject = f"student {student_spec}"
    fixed = None
    mapped = False
    raw = check_tokenizer(s_tok, s_config, subject=subject, is_trained=True)
    try:
        fixed, changes = student_after_init(cfg.train.student, s_tok, t_tok)
    except DistillkitError as e:
        if cfg.train.student.tokenizer == "map" and t_tok is not None:
            findings += check_tokenizer_mode(cfg, t_tok, s_tok, None, label_spec, student_spec)
        else:
            findings.append(Finding("student_tokens", "error", f"{subject}: {e}",
                                    "train.student.tokenizer: own", "student"))
    else:
        if t_tok is not None:
            from distillkit.student.tokenizer import MAP_NOTE

            mapped = any(c.startswith(MAP_NOTE) for c in changes)
            findings += check_tokenizer_mode(cfg, t_tok, s_tok, fixed, label_spec, student_spec, mapped)
        findings += [replace(f, subject="student") for f in _after_train_fixes(raw, fixed, changes, subject)]
        adopted = [c for c in changes if c.startswith("adopted")]
        if adopted:
            findings.append(Finding("student_tokens", "warning", f"{subject} {adopted[0]}.",
                                    "nothing to do (train.student.tokenizer: own keeps the student's "
                                    "tokens, with train.kd.enabled: false)", "student"))
    return fixed, mapped


def _check_vocabularies(cfg, t_tok, fixed, t_config, s_config, label_spec: str) -> list[Finding]:
    """KD or on-policy training on the teacher's ids: the pair's vocabularies agree (`vocab_compat`), stored labels
    read back with the student's tokenizer, or map across tokenizers when `train.kd.cross_tokenizer` says so."""
    findings: list[Finding] = []
    pair = f"teacher {label_spec} and student {cfg.train.student.model}"
    fix = ("train.student.tokenizer: teacher (or auto) lets a student with the teacher's BPE adopt its "
           "special tokens, or map keeps the student's own and maps the teacher's onto them by role; with "
           "another BPE set train.kd.cross_tokenizer: true (stored top-k mapped onto "
           "the student's tokens by spelling) or train.kd.enabled: false (SFT on the teacher's text "
           "works across tokenizers)")
    prefill = cfg.generate.prefill_of(label_spec)  # a routed teacher's own (a non-reasoning one: the empty block)
    finding, _shared = check_pair(t_tok, fixed, t_config, s_config, subject=pair, prefill=prefill, fix=fix)
    stored = cfg.train.kd.enabled and cfg.train.kd.teacher_probs != "live"  # labels on the teacher's ids
    crossed = finding.severity == "error" and stored and cfg.train.kd.cross_tokenizer
    if crossed:
        finding = Finding("vocab_compat", "ok", f"{pair} tokenize differently; train.kd.cross_tokenizer "
                          "maps the stored top-k onto the student's tokens.", subject="teacher/student")
        findings.append(check_cross_tokenizer(cfg, t_tok, fixed, pair, label_spec if cfg.generate.teachers else None))
    findings.append(replace(finding, subject="teacher/student"))
    if finding.severity != "error" and stored and not crossed:
        findings.append(check_trace_roundtrip(t_tok, fixed, prefill, pair, fix))
    return findings


def _check_other_teachers(cfg, models: _Models, fixed, s_config, label_spec: str) -> list[Finding]:
    """With `generate.teachers`, stored soft labels are each record's own teacher's (train/teachers.py): every other
    teacher model is checked against the student as the labelling teacher is (its vocabulary, or its cross-tokenizer
    alignment measured on its own traces)."""
    kd = cfg.train.kd
    if not (kd.enabled and kd.teacher_probs not in ("live", "served")):
        return []
    findings: list[Finding] = []
    for spec in dict.fromkeys(t.model for t in cfg.generate.teachers):
        if spec == label_spec:
            continue
        t_tok, t_config = models.load(spec, "teacher", "warning",
                                      "Vocab compatibility for KD cannot be checked before training.")
        if t_tok is not None:
            findings += _check_vocabularies(cfg, t_tok, fixed, t_config, s_config, spec)
    return findings


def _config_only(loaded: dict, spec: str):
    result = loaded.get(spec)
    return result[1] if isinstance(result, tuple) else None
