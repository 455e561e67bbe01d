"""Teacher and student side by side: whether token-level KL between them is meaningful (`vocab_compat`), whether the
teacher's ids of a sample trace read back with the student's tokenizer, and how well cross-tokenizer labels align."""

from __future__ import annotations

from typing import Optional

from distillkit.tokenizer_checks import ANSWER_TEXT, REASONING_TEXT, THINK_CLOSE, THINK_OPEN, Finding


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


def check_cross_tokenizer(cfg, teacher, student, subject: str, teacher_model: Optional[str] = None) -> Finding:
    """`train.kd.cross_tokenizer`: the measured alignment, on the first traces of the training input when they
    exist (share of student positions with a soft label, share of the teacher's top-k mass that maps), else
    on preflight's sample trace (positions only: a sample trace has no top-k). A warning below half of the
    positions: most of the student's tokens would then train on CE only. With `teacher_model` (a run with
    `generate.teachers`) only that teacher's traces are measured (their `teacher` column; an empty one is the
    labelling teacher's)."""
    from distillkit.train.cross_tokenizer import AlignmentStats, CrossTokenizerMap, measure_alignment

    cmap = CrossTokenizerMap(teacher, student)
    src = cfg.records_dir
    try:
        records = _first_traces(src, teacher_model, cfg.label_teacher.model) if src.is_dir() else []
    except Exception:  # an unreadable or half-written folder: measured at train time instead
        records = []
    stats = measure_alignment(cmap, records, student)
    if stats.num_positions:
        fig = stats.summary()
        where = (f"on {len(records)} traces of {src}: {100 * fig['share_positions_labelled']:.1f}% of student "
                 f"positions get a soft label, {100 * fig['share_topk_mass_mapped']:.1f}% of the teacher's top-k "
                 "mass maps to student ids")
    else:
        text, ids = sample_trace(teacher, cfg.generate.prefill_of(teacher_model or cfg.label_teacher.model))
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


def _first_traces(src, teacher_model: Optional[str], default: str) -> list[dict]:
    """The first `CROSS_TOKENIZER_SAMPLE` records of the stage folder `src`; with `teacher_model` the first of that
    teacher's among the first 64 x as many records."""
    from distillkit.records import StageRecords

    records = StageRecords(src)
    if teacher_model is None:
        return records.head(CROSS_TOKENIZER_SAMPLE)
    out = []
    for i, rec in enumerate(records):
        if len(out) == CROSS_TOKENIZER_SAMPLE or i == 64 * CROSS_TOKENIZER_SAMPLE:
            break
        if (rec.get("teacher") or default) == teacher_model:
            out.append(rec)
    return out
