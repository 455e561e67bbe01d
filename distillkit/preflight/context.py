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
