"""The student's tokenizer as student_init/ will hold it (the train stage's repairs applied), and which
`train.student.tokenizer` mode a teacher/student pair needs."""

from __future__ import annotations

from dataclasses import replace

from distillkit.errors import DistillkitError
from distillkit.preflight.pair import sample_trace
from distillkit.tokenizer_checks import Finding, check_tokenizer


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
    from distillkit.student.special_map import role_problems

    pair = f"teacher {teacher_spec} and student {student_spec}"
    findings = [Finding("tokenizer_mode", "ok", f"{pair}: {_mode_needed(teacher, student)}. The recipe says "
                        f"train.student.tokenizer: {cfg.train.student.tokenizer}.", subject="teacher/student")]
    if fixed is None:  # `map` refused by student_init's choice: say why, with the fix
        problems = role_problems(teacher, student, teacher_spec, student_spec)
        if not problems:  # another BPE: student_after_init's message says so
            return findings
        return findings + [Finding("special_roles", "error",
                                   f"train.student.tokenizer=map: {'; '.join(p for p, _ in problems)}.",
                                   "; or ".join(dict.fromkeys(f for _, f in problems)), "teacher/student")]
    if not mapping:
        return findings
    return findings + [_check_special_roles(cfg, teacher, fixed, teacher_spec, student_spec)]


def _mode_needed(teacher, student) -> str:
    """The `tokenizer_mode` finding's reading of the pair: what it needs, and which mode `auto` picks."""
    from distillkit.student.tokenizer import keeps_own_specials, shares_bpe, special_differences

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
    return need


def _check_special_roles(cfg, teacher, fixed, teacher_spec: str, student_spec: str) -> Finding:
    """`special_roles` of a student that keeps its tokens: every teacher special maps by role, a sample trace mapped
    onto the student's ids reads back ending with its EOS, and no live teacher compares logits id by id."""
    from distillkit.student.special_map import build_special_map

    pair = f"teacher {teacher_spec} and student {student_spec}"
    try:
        special_map = build_special_map(teacher, fixed, teacher_spec, student_spec)
    except DistillkitError as e:
        return Finding("special_roles", "error", str(e), "train.student.tokenizer: teacher", "teacher/student")
    text, ids = sample_trace(teacher, cfg.generate.prompts.prefill)
    mapped = special_map.map_ids(ids)
    decoded = fixed.decode(mapped[:-1].tolist(), skip_special_tokens=False) if (mapped >= 0).all() else None
    if decoded != text or int(mapped[-1]) != fixed.eos_token_id:
        return Finding("special_roles", "error",
                       f"{pair}: a sample trace mapped onto the student's ids does not read back as its "
                       f"text ending with the student's EOS {fixed.eos_token!r} (got {decoded!r}, last id "
                       f"{int(mapped[-1])}).", "train.student.tokenizer: teacher", "teacher/student")
    if cfg.train.on_policy.enabled and cfg.train.kd.teacher_probs != "served":
        return Finding("special_roles", "error",
                       f"{pair}: on-policy training with a live teacher (TRL's trainers) compares logits id "
                       "by id, and this student keeps its own special tokens.",
                       "train.kd.teacher_probs: served (its top-k is mapped onto the student's ids), or "
                       "train.student.tokenizer: teacher", "teacher/student")
    return Finding("special_roles", "ok", f"{pair}: the student keeps its special tokens; "
                   f"{special_map.summary()}. A sample trace maps onto the student's ids and ends with "
                   f"its EOS {fixed.eos_token!r}.", subject="teacher/student")
