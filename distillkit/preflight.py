"""Preflight: check the teacher's and student's tokenizers, chat templates and vocabularies before a stage runs.

These are the silent failures of reasoning distillation: each one lets a run finish and produce a
useless model. A check returns a `Finding`; `error` findings stop the stage (`raise_on_fatal`), the
others are printed as warnings.

    check               what goes wrong when it fails
    chat_template       no template: prompts cannot be rendered, the trained turn has no shape
    reasoning_rendered  the template drops <think>...</think> from the trained turn (QwQ/R1-style
                        templates strip reasoning from assistant turns): the student learns answers only
    trained_turn        the trained turn is not rendered verbatim after the generation prompt, or is
                        not closed by the EOS token: the train stage cannot place the loss labels
    eos_pad             no EOS, or pad == EOS while EOS is a training target: the EOS label is masked
                        out with the padding and the student never learns to stop
    think_tokens        <think>/</think> registered as *special* tokens: decode(skip_special_tokens=True)
                        (vLLM's default, lm-eval's) silently drops them from every trace
    generation_markers  no {% generation %} in the template: TRL's assistant_only_loss cannot mask
    vocab_compat        teacher and student vocabularies differ: token-level KL compares unrelated tokens
    tokenizer_load      the tokenizer (or model config) could not be loaded at all
    distributed         train.accelerate_config cannot run as it says on this machine (DeepSpeed missing or without
                        a GPU, FSDP1 on CPU processes): accelerate would fall back to DDP or fail late
    task_name           an evaluate.tasks name no task folder defines: the run would fail after training
    task_dataset        a task's dataset is gated without access, missing, or lacks the columns it reads

Only tokenizers and model configs are loaded, never weights. For a GGUF model the cached converted
folder is used when it exists, else the tokenizer and config are read from the GGUF metadata.

Size: one function per check in the table above, each with its message and fix. The single-model checks
(chat_template to generation_markers) are in `distillkit.tokenizer_checks`, tokenizer loading in `distillkit.models`:
the train stage runs them too, and a stage imports nothing from here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Iterable, Optional

from distillkit.errors import DistillkitError
from distillkit.models import load_tokenizer_and_config
from distillkit.registry import load_backend
# the single-model checks live with their Finding type, below the stages (train runs them on student_init);
# they stay importable from here, as preflight's checks
from distillkit.tokenizer_checks import (  # noqa: F401
    ANSWER_TEXT,
    REASONING_TEXT,
    THINK_CLOSE,
    THINK_OPEN,
    Finding,
    Severity,
    check_chat_template,
    check_eos,
    check_generation_markers,
    check_reasoning_rendered,
    check_think_tokens,
    check_tokenizer,
    check_trained_turn,
    raise_on_fatal,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- pair


def _id_to_token(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def sample_trace(teacher, prefill: Optional[str] = "<think>\n") -> tuple[str, list[int]]:
    """(completion text, the teacher's completion ids with its EOS) of an R1-style trace, rendered as the
    generate stage would: after the teacher's generation prompt and `prefill`, the completion closes
    the reasoning block, answers, and ends with EOS."""
    opened = bool(prefill) and THINK_OPEN in prefill
    text = ("" if opened else f"{THINK_OPEN}\n") + f"{REASONING_TEXT}\n{THINK_CLOSE}\n\n{ANSWER_TEXT}"
    ids = teacher(text, add_special_tokens=False)["input_ids"]
    return text, ids + ([teacher.eos_token_id] if teacher.eos_token_id is not None else [])


def check_pair(teacher, student, teacher_config=None, student_config=None,
               subject: str = "teacher/student", prefill: Optional[str] = "<think>\n",
               fix: str = "") -> tuple[Finding, Optional[int]]:
    """Whether token-level KL between teacher and student is meaningful; returns (finding, shared range).

    Compatible: the same token at every id both tokenizers define. Model vocab sizes may still differ
    by padding (Qwen2.5: 151,936 for <= 3B vs 152,064 for 7B+, over the same 151,665 tokens); logits are
    then compared over the shared range `[0, shared)`, shared = the smaller config vocab_size (the
    smaller tokenizer length without configs). `shared` is None when the pair is incompatible.

    A few differing added tokens are harmless only if traces never hold them: a sample trace is
    rendered with the teacher's tokenizer (`sample_trace`), and a differing id in it is an error
    (`</think>` is in every R1 trace). `fix` replaces the default advice.
    """
    t_map, s_map = _id_to_token(teacher), _id_to_token(student)
    t_len, s_len = max(t_map, default=-1) + 1, max(s_map, default=-1) + 1
    t_vocab = getattr(teacher_config, "vocab_size", None) or t_len
    s_vocab = getattr(student_config, "vocab_size", None) or s_len
    shared = min(t_vocab, s_vocab)
    common = min(t_len, s_len)
    mismatched = [i for i in range(common) if t_map.get(i) != s_map.get(i)]
    fix = fix or ("use a student from the teacher's tokenizer family (e.g. Qwen2.5 teacher -> Qwen2.5 student), "
                  "or set train.kd.enabled: false (SFT on the teacher's text works across tokenizers)")
    examples = ", ".join(f"id {i}: {t_map.get(i)!r} vs {s_map.get(i)!r}" for i in mismatched[:3])
    if mismatched:
        added = set(getattr(teacher, "added_tokens_decoder", {})) | set(getattr(student, "added_tokens_decoder", {}))
        if len(mismatched) > max(8, common // 100) or not set(mismatched) <= added:
            return Finding("vocab_compat", "error",
                           f"{subject} vocabularies differ at {len(mismatched):,} of {common:,} shared ids "
                           f"({examples}): token-level KL would compare unrelated tokens.", fix, subject), None
    beyond = [t_map[i] for i in range(s_vocab, t_len) if i in t_map]
    if beyond:
        return Finding("vocab_compat", "error",
                       f"the teacher's tokenizer has {len(beyond):,} token(s) at ids >= the student's vocab_size "
                       f"{s_vocab:,} (e.g. {beyond[0]!r}): the student has no logit for them.", fix, subject), None
    sizes = f"vocab_size {t_vocab:,} vs {s_vocab:,}" if t_vocab != s_vocab else f"vocab_size {t_vocab:,}"
    occurring = sorted(set(mismatched) & set(sample_trace(teacher, prefill)[1]))
    if occurring:
        named = ", ".join(f"{t_map[i]!r} (id {i}) is {s_map.get(i)!r} for the student" for i in occurring)
        return Finding("vocab_compat", "error",
                       f"{subject} differ at {len(mismatched)} added token id(s), and traces hold them: {named}. "
                       "The stored soft labels and the teacher's token ids would train the student on other "
                       "tokens.", fix, subject), None
    if mismatched:
        return Finding("vocab_compat", "warning",
                       f"{subject} share a vocabulary except {len(mismatched)} added token(s) ({examples}); "
                       f"KL over the shared range [0, {shared:,}) ({sizes}); a sample trace holds none of them.",
                       "harmless unless those tokens occur in traces; " + fix, subject), shared
    if t_len != s_len:
        return Finding("vocab_compat", "warning",
                       f"{subject} tokenizers agree on ids [0, {common:,}) but hold {t_len:,} vs {s_len:,} tokens; "
                       f"KL over the shared range [0, {shared:,}) ({sizes}).",
                       "fine if the extra tokens never occur in traces; " + fix, subject), shared
    return Finding("vocab_compat", "ok",
                   f"{subject} use the same tokenizer ({t_len:,} tokens); {sizes}; KL over the shared range "
                   f"[0, {shared:,}).", subject=subject), shared


# ----------------------------------------------------------------------------------------- recipe


def student_after_init(student_cfg, tokenizer, teacher=None):
    """(tokenizer, changes) as student_init/ will hold them: the teacher's special tokens when
    `train.student.tokenizer` adopts them, then `fix_tokenizer`. Raises DistillkitError when the policy
    cannot be applied (teacher asked, other BPE). Without the train extra: the tokenizer unchanged."""
    import copy

    try:
        from distillkit.student.tokenizer import choose_tokenizer, fix_tokenizer
    except ImportError:  # the train extra is missing; the stage itself will say so
        return tokenizer, []
    chosen, rows, note = choose_tokenizer(student_cfg.tokenizer, tokenizer, teacher)
    chosen = copy.deepcopy(chosen)  # both originals are checked again below
    changes = fix_tokenizer(chosen)
    if rows:
        moved = ", ".join(f"{r.id} {r.was!r}->{r.now!r}" for r in rows[:8]) + (" ..." if len(rows) > 8 else "")
        note += f": {moved}"
    return chosen, ([note] if note else []) + changes


def _after_train_fixes(raw: list[Finding], fixed, changes: list[str], subject: str) -> list[Finding]:
    """The student's checks as they stand after student_init (`fixed`, from `student_after_init`).

    Problems the train stage repairs (pad == EOS, EOS that is not the end of turn, a template that drops
    reasoning or lacks generation markers) become warnings that say so; the rest keep their severity.
    """
    if not changes:
        return raw
    after = {f.check: f for f in check_tokenizer(fixed, None, subject=subject)}
    out = []
    for f in raw:
        new = after.get(f.check)
        if f.severity != "ok" and new is not None and new.severity == "ok":
            # name the change that helped: eos/pad fixes for eos_pad and the trained turn's EOS
            which = ("pad_token", "eos_token") if f.check == "eos_pad" else ("chat_template", "eos_token", "adopted")
            done = [c for c in changes if c.startswith(which)] or changes
            f = Finding(f.check, "warning", f"{f.message} The train stage fixes this in student_init/ "
                        f"({'; '.join(done)}).", f.fix, subject)
        elif new is not None and new.severity != "ok" and f.severity == "ok":
            f = replace(new, message=f"after student_init's changes ({'; '.join(changes)}): {new.message}")
        out.append(f)
    return out


REPORT_TO_PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit", "neptune": "neptune"}


def check_report_to(report_to: Iterable[str]) -> Optional[Finding]:
    """`train.report_to` names loggers transformers knows and that are installed (else the Trainer fails
    only after the earlier stages ran). None when nothing is asked for."""
    names = [n for n in report_to if n != "none"]
    if not names:
        return None
    from transformers.integrations.integration_utils import (INTEGRATION_TO_CALLBACK,
                                                             get_available_reporting_integrations)

    unknown = [n for n in names if n != "all" and n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        return Finding("report_to", "error", f"train.report_to names {unknown}, which transformers does not know.",
                       f"use some of {sorted(INTEGRATION_TO_CALLBACK)} (or none)")
    available = set(get_available_reporting_integrations())
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        pkgs = " ".join(REPORT_TO_PACKAGES.get(n, n) for n in missing)
        return Finding("report_to", "error", f"train.report_to asks for {missing}, which {'is' if len(missing) == 1 else 'are'} "
                       "not installed.", f"pip install {pkgs}, or remove {'it' if len(missing) == 1 else 'them'} "
                       "from train.report_to")
    return Finding("report_to", "ok", f"train.report_to: {', '.join(names)} installed.")


def preflight(cfg, stages: Optional[Iterable[str]] = None) -> list[Finding]:
    """All findings for the stages about to run (default: the recipe's `stages`).

    generate: the teacher's template, EOS and think tokens (when the backend renders prompts locally;
    an OpenAI endpoint applies its own template, so an unavailable tokenizer is only a warning).
    train: the student's template, trained turn, EOS/pad, think tokens, generation markers, judged
    after the fixes the train stage applies; with KD or on-policy distillation, vocab compatibility.
    """
    stages = list(cfg.stages if stages is None else stages)
    findings: list[Finding] = []
    loaded: dict[str, Any] = {}

    def load(spec: str, subject: str, severity: Severity, why: str):
        if spec not in loaded:
            try:
                loaded[spec] = load_tokenizer_and_config(spec)
            except DistillkitError as e:
                loaded[spec] = e
        result = loaded[spec]
        if isinstance(result, DistillkitError):
            findings.append(Finding("tokenizer_load", severity, f"{subject} {spec!r}: {getattr(result, 'what', result)} "
                                    f"{why}".rstrip(), getattr(result, "fix", None)
                                    or "check the model name/path (and network access for a Hub id)", subject))
            return None, None
        return result

    teacher_spec = cfg.generate.teacher.model
    if "generate" in stages:
        # the backend class says what it needs: the teacher's tokenizer where it renders prompts here (vLLM,
        # transformers, an OpenAI `completions` api); how its text treats special tokens
        backend = load_backend(cfg.generate.teacher.backend)
        needs = backend.renders_prompt_locally(cfg.generate.teacher)
        why = "" if needs else ("The teacher's endpoint applies its own template, so the teacher's template and "
                                "think-token checks are skipped.")
        tok, config = load(teacher_spec, "teacher", "error" if needs else "warning", why)
        if tok is not None:
            subject = f"teacher {teacher_spec}"
            own = [check_chat_template(tok, subject), check_eos(tok, config, is_eos_trained=False, subject=subject),
                   # a special <think> vanishes from text decoded with skip_special_tokens (vLLM, servers)
                   check_think_tokens(tok, subject, "error" if backend.skips_special_tokens else "warning")]
            if not needs:  # the server renders the prompt: a missing local template does not matter
                own = [Finding(f.check, "warning", f.message, f.fix, f.subject) if f.severity == "error"
                       and f.check == "chat_template" else f for f in own]
            findings += [replace(f, subject="teacher") for f in own]

    if "train" in stages:
        report = check_report_to(cfg.train.report_to)
        if report is not None:
            findings.append(replace(report, subject="train"))
        findings += check_distributed(cfg.train)
        student_spec = cfg.train.student.model
        subject = f"student {student_spec}"
        s_tok, s_config = load(student_spec, "student", "error", "")
        needs_teacher = cfg.train.kd.enabled or cfg.train.on_policy.enabled
        # whose ids the soft labels are on: the scoring teacher with a score stage, a served teacher's model
        kd = cfg.train.kd
        label_spec = (kd.teacher_server.model if kd.teacher_probs == "served" and kd.teacher_server.model
                      else cfg.label_teacher.model)
        t_tok = t_config = None
        if needs_teacher:
            t_tok, t_config = load(label_spec, "teacher", "warning",
                                   "Vocab compatibility for KD cannot be checked before training.")
        elif cfg.train.student.tokenizer != "own":  # only to see whether the student adopts its tokens
            if label_spec not in loaded:
                try:
                    loaded[label_spec] = load_tokenizer_and_config(label_spec)
                except DistillkitError as e:
                    loaded[label_spec] = e
            if isinstance(loaded[label_spec], tuple):
                t_tok, t_config = loaded[label_spec]
        fixed = None
        mapped = False  # the student keeps its special tokens; the teacher's are mapped onto them by role
        if s_tok is not None:
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
        if needs_teacher and fixed is not None and t_tok is not None and not mapped:
            pair = f"teacher {label_spec} and student {student_spec}"
            fix = ("train.student.tokenizer: teacher (or auto) lets a student with the teacher's BPE adopt its "
                   "special tokens, or map keeps the student's own and maps the teacher's onto them by role; with "
                   "another BPE set train.kd.cross_tokenizer: true (stored top-k mapped onto "
                   "the student's tokens by spelling) or train.kd.enabled: false (SFT on the teacher's text "
                   "works across tokenizers)")
            finding, _shared = check_pair(t_tok, fixed, t_config, s_config, subject=pair,
                                          prefill=cfg.generate.prompts.prefill, fix=fix)
            stored = cfg.train.kd.enabled and cfg.train.kd.teacher_probs != "live"  # labels on the teacher's ids
            crossed = finding.severity == "error" and stored and cfg.train.kd.cross_tokenizer
            if crossed:
                finding = Finding("vocab_compat", "ok", f"{pair} tokenize differently; train.kd.cross_tokenizer "
                                  "maps the stored top-k onto the student's tokens.", subject="teacher/student")
                findings.append(check_cross_tokenizer(cfg, t_tok, fixed, pair))
            findings.append(replace(finding, subject="teacher/student"))
            if finding.severity != "error" and stored and not crossed:
                findings.append(check_trace_roundtrip(t_tok, fixed, cfg.generate.prompts.prefill, pair, fix))
        findings += check_context(cfg, stages, s_config, t_config if t_tok is not None and label_spec == teacher_spec
                                  else _config_only(loaded, teacher_spec))
        soft = check_soft_labels(cfg, stages)
        if soft is not None:
            findings.append(soft)
    elif "generate" in stages:
        findings += check_context(cfg, stages, None, _config_only(loaded, teacher_spec))
    if "evaluate" in stages:
        findings += check_eval_tasks(cfg.evaluate)
    for f in findings:
        # the caller shows the findings (the CLI prints them once); the debug log keeps a record
        log.debug("preflight %s", f)
    return findings


def check_tokenizer_mode(cfg, teacher, student, fixed, teacher_spec: str, student_spec: str,
                         mapping: bool = False) -> list[Finding]:
    """Which `train.student.tokenizer` mode the pair needs (`tokenizer_mode`, ok), and, when the student keeps its
    tokens with the teacher's mapped by role (`mapping`: `map`, or `auto` for a Qwen3-like student), whether every
    role matches and a sample trace survives the map (`special_roles`). `fixed`: the student as student_init/ will
    hold it; None when `map` was refused. Both tokenizers are read from their files and templates.

        same BPE, same special tokens         exact KD on the teacher's ids (nothing to do)
        same BPE, other specials, the student
          has reasoning tokens of its own     map (auto picks it): its <think>/</think> and end of turn are kept
        same BPE, other specials, none of
          its own                             teacher (auto picks it): the student adopts the teacher's
        other BPE                             train.kd.cross_tokenizer: true (or SFT only)
    """
    from distillkit.student.special_map import build_special_map, role_problems
    from distillkit.student.tokenizer import keeps_own_specials, shares_bpe, special_differences

    pair = f"teacher {teacher_spec} and student {student_spec}"
    if not shares_bpe(student, teacher):
        need = ("they split text differently (another BPE): token-level KD needs train.kd.cross_tokenizer: true "
                "(stored top-k mapped by spelling); SFT works on the text")
    elif not special_differences(student, teacher):
        need = "same BPE and the same special tokens: exact KD on the teacher's ids, nothing to map"
    elif keeps_own_specials(student, teacher):
        need = ("same BPE, other special tokens, and the student has reasoning tokens of its own: "
                "train.student.tokenizer: map (auto picks it) keeps them and maps the teacher's special ids by role")
    else:
        need = ("same BPE, other special tokens, none of the student's own to keep: train.student.tokenizer: "
                "teacher (auto picks it) adopts the teacher's")
    findings = [Finding("tokenizer_mode", "ok", f"{pair}: {need}. The recipe says train.student.tokenizer: "
                        f"{cfg.train.student.tokenizer}.", subject="teacher/student")]
    if fixed is None:  # `map` refused by student_init's choice: say why, with the fix
        problems = role_problems(teacher, student, teacher_spec, student_spec)
        if not problems:  # another BPE: student_after_init's message says so
            return findings
        return findings + [Finding("special_roles", "error",
                                   f"train.student.tokenizer=map: {'; '.join(p for p, _ in problems)}.",
                                   "; or ".join(dict.fromkeys(f for _, f in problems)), "teacher/student")]
    if not mapping:
        return findings
    try:
        special_map = build_special_map(teacher, fixed, teacher_spec, student_spec)
    except DistillkitError as e:
        return findings + [Finding("special_roles", "error", str(e), "train.student.tokenizer: teacher",
                                   "teacher/student")]
    text, ids = sample_trace(teacher, cfg.generate.prompts.prefill)
    mapped = special_map.map_ids(ids)
    decoded = fixed.decode(mapped[:-1].tolist(), skip_special_tokens=False) if (mapped >= 0).all() else None
    if decoded != text or int(mapped[-1]) != fixed.eos_token_id:
        return findings + [Finding("special_roles", "error",
                                   f"{pair}: a sample trace mapped onto the student's ids does not read back as its "
                                   f"text ending with the student's EOS {fixed.eos_token!r} (got {decoded!r}, last id "
                                   f"{int(mapped[-1])}).", "train.student.tokenizer: teacher", "teacher/student")]
    if cfg.train.on_policy.enabled and cfg.train.kd.teacher_probs != "served":
        return findings + [Finding("special_roles", "error",
                                   f"{pair}: on-policy training with a live teacher (TRL's trainers) compares logits id "
                                   "by id, and this student keeps its own special tokens.",
                                   "train.kd.teacher_probs: served (its top-k is mapped onto the student's ids), or "
                                   "train.student.tokenizer: teacher", "teacher/student")]
    return findings + [Finding("special_roles", "ok", f"{pair}: the student keeps its special tokens; "
                               f"{special_map.summary()}. A sample trace maps onto the student's ids and ends with "
                               f"its EOS {fixed.eos_token!r}.", subject="teacher/student")]


def check_eval_tasks(ecfg) -> list[Finding]:
    """evaluate.tasks: every name exists and its dataset is readable (gated access, local files, columns),
    read from the task YAMLs without building a task or loading a model (`distillkit.evaluate.task_checks`)."""
    try:
        from distillkit.evaluate.task_checks import check_tasks
    except ImportError:  # lm-eval not installed: the evaluate stage says which extra to install
        return []
    try:
        results = check_tasks(list(ecfg.tasks), ecfg.include_path)
    except DistillkitError as e:
        return [Finding("task_name", "error", str(e), "fix evaluate.include_path", "evaluate")]
    return [Finding(check, severity, message, fix, "evaluate") for check, severity, message, fix in results]


def check_trace_roundtrip(teacher, student, prefill: Optional[str], subject: str, fix: str) -> Finding:
    """The train stage's own test (`train.data.check_same_tokenizer`) on a sample trace: the teacher's
    completion ids decode to the completion text with the student's tokenizer. When they do not, the
    train stage refuses stored soft labels, after the whole generation ran."""
    text, ids = sample_trace(teacher, prefill)
    body = ids[:-1] if ids and ids[-1] == student.eos_token_id else ids
    decoded = student.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False) \
        if max(body, default=0) < len(student) else None
    if decoded != text:
        at = next((i for i, (x, y) in enumerate(zip(text, decoded or "")) if x != y), min(len(text), len(decoded or "")))
        return Finding("trace_roundtrip", "error",
                       f"{subject}: the teacher's token ids of a sample trace do not decode to its text with the "
                       f"student's tokenizer ({text[max(0, at - 10):at + 20]!r} decodes as "
                       f"{(decoded or '')[max(0, at - 10):at + 30]!r}); the train stage would refuse the stored "
                       "soft labels after generation.", fix, "teacher/student")
    return Finding("trace_roundtrip", "ok", f"{subject}: the teacher's ids of a sample trace decode to the same "
                   "text with the student's tokenizer.", subject="teacher/student")


CROSS_TOKENIZER_SAMPLE = 32  # records measured by check_cross_tokenizer


def check_cross_tokenizer(cfg, teacher, student, subject: str) -> Finding:
    """`train.kd.cross_tokenizer`: the measured alignment, on the first traces of the training input when they
    exist (share of student positions with a soft label, share of the teacher's top-k mass that maps), else
    on preflight's sample trace (positions only: a sample trace has no top-k). A warning below half of the
    positions: most of the student's tokens would then train on CE only."""
    from distillkit.records import StageRecords
    from distillkit.train.cross_tokenizer import AlignmentStats, CrossTokenizerMap, measure_alignment

    cmap = CrossTokenizerMap(teacher, student)
    src = cfg.records_dir
    try:
        records = StageRecords(src).head(CROSS_TOKENIZER_SAMPLE) if src.is_dir() else []
    except Exception:  # an unreadable or half-written folder: measured at train time instead
        records = []
    stats = measure_alignment(cmap, records, student)
    if stats.num_positions:
        fig = stats.summary()
        where = (f"on {len(records)} traces of {src}: {100 * fig['share_positions_labelled']:.1f}% of student "
                 f"positions get a soft label, {100 * fig['share_topk_mass_mapped']:.1f}% of the teacher's top-k "
                 "mass maps to student ids")
    else:
        text, ids = sample_trace(teacher, cfg.generate.prompts.prefill)
        ids = ids[:-1] if ids and ids[-1] == teacher.eos_token_id else ids
        body = student(text, add_special_tokens=False)["input_ids"]
        stats = AlignmentStats()
        stats.add(cmap.soft_labels(ids, [[i] for i in ids], [[0.0]] * len(ids), body).stats)
        fig = stats.summary()
        where = (f"on preflight's sample trace (no traces yet): {100 * fig['share_positions_labelled']:.1f}% of "
                 "student positions get a soft label; the top-k mass that maps is measured on the traces at "
                 "train time (train manifest: stats.data.cross_tokenizer)")
    low = fig["share_positions_labelled"] < 0.5
    return Finding("cross_tokenizer", "warning" if low else "ok", f"{subject}: cross-tokenizer soft labels {where}; "
                   "other positions train on CE only.",
                   "most tokens would get no soft label: a student closer to the teacher's tokenizer, or "
                   "train.kd.enabled: false" if low else "", "teacher/student")


def check_soft_labels(cfg, stages: list[str]) -> Optional[Finding]:
    """KD on stored soft labels needs this run's generation (or scoring) to store them, of the kind the loss reads
    (the train stage refuses records without them, or of the other kind, after generation). None when it does not
    apply."""
    t = cfg.train
    stored = ("topk_renorm", "topk_tail", "sampled")
    if not (t.kd.enabled and t.kd.teacher_probs in stored and not t.sources
            and ("generate" in stages or "score" in stages)):
        return None
    want = "sampled" if t.kd.teacher_probs == "sampled" else "topk"
    if "score" in cfg.stages:
        s = cfg.score
        kind, what = s.soft_labels, (f"{s.soft_label_samples} sampled draws per token" if s.soft_labels == "sampled"
                                     else f"top-{s.topk} logprobs")
        where, key = f"the score stage adds {s.teacher.model}'s {what}", "score.soft_labels"
    else:
        g = cfg.generate.sampling
        if g.soft_labels == "topk" and g.topk_logprobs == 0:
            return Finding("soft_labels", "error", "train.kd is enabled on stored soft labels (kd.teacher_probs="
                           f"{t.kd.teacher_probs}) but generate.sampling.topk_logprobs is 0: the traces would carry "
                           "none.", "set generate.sampling.topk_logprobs: 20, or add the `score` stage, or "
                           "train.kd.teacher_probs: live, or train.kd.enabled: false", "train")
        kind, what = g.soft_labels, (f"{g.soft_label_samples} sampled draws per token" if g.soft_labels == "sampled"
                                     else f"top-{g.topk_logprobs} logprobs")
        where, key = f"the teacher's {what} are stored", "generate.sampling.soft_labels"
    if kind != want:
        return Finding("soft_labels", "error", f"{where}, and train.kd.teacher_probs={t.kd.teacher_probs} reads "
                       f"{'sampled' if want == 'sampled' else 'top-k'} labels.",
                       f"set {key}: {want}, or train.kd.teacher_probs: "
                       f"{'sampled' if kind == 'sampled' else 'topk_tail'}", "train")
    return Finding("soft_labels", "ok", f"{where} for train.kd.", subject="train")


def _config_only(loaded: dict, spec: str):
    result = loaded.get(spec)
    return result[1] if isinstance(result, tuple) else None


def _positions(config) -> Optional[int]:
    return getattr(config, "max_position_embeddings", None) if config is not None else None


def check_context(cfg, stages: list[str], s_config, t_config) -> list[Finding]:
    """Lengths fit the models' positions: train.max_length (and the students' evaluation budget) within
    the student's `max_position_embeddings` after `train.student` overrides; the teacher's
    `max_model_len` and `max_tokens` within its own. vLLM refuses a longer engine at start; training
    past the positions a RoPE model was made for runs but degrades, so both are errors here."""
    findings: list[Finding] = []
    st = cfg.train.student
    student_positions = st.max_position_embeddings or _positions(s_config)
    rope_fix = ("extend the student's context: train.student.rope_theta: 300000 and "
                "train.student.max_position_embeddings: 32768 (open-r1 trains Qwen2.5-Math-7B at 32k as "
                "open-r1/Qwen2.5-Math-7B-RoPE-300k), or train.student.rope_scaling: {rope_type: yarn, factor: 4.0, "
                f"original_max_position_embeddings: {student_positions}}}; or lower ")
    if "train" in stages and student_positions:
        if cfg.train.max_length and cfg.train.max_length > student_positions:
            findings.append(Finding(
                "context", "error", f"train.max_length={cfg.train.max_length:,} exceeds student {st.model}'s "
                f"max_position_embeddings {student_positions:,}.", rope_fix + f"train.max_length to {student_positions:,}",
                "student"))
        students = [m for m in cfg.evaluate.models if m.startswith("student")]
        if "evaluate" in stages and students and cfg.evaluate.max_gen_toks >= student_positions:
            findings.append(Finding(
                "context", "error", f"evaluate.max_gen_toks={cfg.evaluate.max_gen_toks:,} does not fit student "
                f"{st.model}'s {student_positions:,} positions (with the prompt).",
                rope_fix + f"evaluate.max_gen_toks below {student_positions:,}", "student"))
    teacher_positions = _positions(t_config)
    if "generate" in stages and teacher_positions and load_backend(cfg.generate.teacher.backend).uses_vllm_engine:
        asked = cfg.generate.teacher.vllm.max_model_len
        if asked and asked > teacher_positions:
            findings.append(Finding(
                "context", "error", f"generate.teacher.vllm.max_model_len={asked:,} exceeds teacher "
                f"{cfg.generate.teacher.model}'s max_position_embeddings {teacher_positions:,}; vLLM refuses it.",
                f"lower it to {teacher_positions:,}, or extend the teacher's RoPE through "
                "generate.teacher.vllm.engine_kwargs: {hf_overrides: {...}}", "teacher"))
        if cfg.generate.sampling.max_tokens >= (asked or teacher_positions):
            findings.append(Finding(
                "context", "error", f"generate.sampling.max_tokens={cfg.generate.sampling.max_tokens:,} leaves no "
                f"room for the prompt in the teacher's {asked or teacher_positions:,}-token context.",
                "raise generate.teacher.vllm.max_model_len or lower generate.sampling.max_tokens", "teacher"))
    return findings


SEVERITY_MARK = {"error": "error  ", "warning": "warning", "ok": "ok     "}


def format_finding(f: Finding, width: int = 80) -> str:
    """One finding as text for a terminal of `width` columns: "severity check (subject): message", wrapped
    under itself, then "fix: ..." indented the same way. Never a line longer than `width`."""
    import textwrap

    indent = " " * (len(SEVERITY_MARK["warning"]) + 1)
    head = f"{SEVERITY_MARK.get(f.severity, f.severity)} {f.check}" + (f" ({f.subject})" if f.subject else "")
    width = max(width, 40)
    lines = textwrap.wrap(f"{head}: {f.message}", width=width, subsequent_indent=indent,
                          break_long_words=True, break_on_hyphens=False)
    if f.fix:
        lines += textwrap.wrap(f"fix: {f.fix}", width=width, initial_indent=indent, subsequent_indent=indent + "     ",
                               break_long_words=True, break_on_hyphens=False)
    return "\n".join(lines)


def check_distributed(train_cfg) -> list[Finding]:
    """An accelerate config that cannot run as it says here (DeepSpeed missing or without a GPU, FSDP1 on CPU) stops
    now: accelerate would otherwise fall back to plain DDP, or fail after the data is prepared."""
    if not train_cfg.accelerate_config:
        return []
    import torch

    from distillkit.train.launch import distributed_problems

    try:
        problems = distributed_problems(train_cfg, has_gpu=torch.cuda.is_available())
    except DistillkitError as e:  # a missing or unreadable config file
        problems = [(str(e), "fix train.accelerate_config")]
    return [Finding("distributed", "error", problem, fix, "train") for problem, fix in problems]
