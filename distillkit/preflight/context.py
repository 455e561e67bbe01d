"""Lengths against the models' positions: training and evaluation within the student's, generation within the
teacher's."""

from __future__ import annotations

from typing import Optional

from distillkit.registry import load_backend
from distillkit.tokenizer_checks import Finding


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
    if "generate" in stages and not cfg.generate.teachers:  # routed teachers: preflight checks each one
        findings += check_teacher_context(cfg.generate, t_config)
    return findings


def check_teacher_context(gen, t_config, key: str = "generate.teacher", sampling_key: str = "generate.sampling",
                          subject: str = "teacher") -> list[Finding]:
    """One teacher's engine (`gen`: its single-teacher generate section) within its positions: `vllm.max_model_len`
    within `max_position_embeddings`, and `sampling.max_tokens` below the context. `key`/`sampling_key`: where the
    recipe sets them (a routed teacher's keys under generate.teachers), named in the findings."""
    findings: list[Finding] = []
    teacher_positions = _positions(t_config)
    if teacher_positions and load_backend(gen.teacher.backend).uses_vllm_engine:
        asked = gen.teacher.vllm.max_model_len
        if asked and asked > teacher_positions:
            findings.append(Finding(
                "context", "error", f"{key}.vllm.max_model_len={asked:,} exceeds teacher "
                f"{gen.teacher.model}'s max_position_embeddings {teacher_positions:,}; vLLM refuses it.",
                f"lower it to {teacher_positions:,}, or extend the teacher's RoPE through "
                f"{key}.vllm.engine_kwargs: {{hf_overrides: {{...}}}}", subject))
        if gen.sampling.max_tokens >= (asked or teacher_positions):
            findings.append(Finding(
                "context", "error", f"{sampling_key}.max_tokens={gen.sampling.max_tokens:,} leaves no "
                f"room for the prompt in the teacher's {asked or teacher_positions:,}-token context.",
                f"raise {key}.vllm.max_model_len or lower {sampling_key}.max_tokens", subject))
    return findings
