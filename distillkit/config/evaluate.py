"""`evaluate:`: which models are evaluated on which lm-eval tasks, and how they sample."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, NonNegativeFloat, PositiveInt

from distillkit.config.base import StrictModel


class EvaluateConfig(StrictModel):
    models: list[Literal["teacher", "student_before", "student_after"]] = Field(
        default_factory=lambda: ["teacher", "student_before", "student_after"])
    tasks: list[str] = Field(default_factory=lambda: ["r1_aime24", "r1_aime25", "r1_math500"])
    """lm-eval task names. distillkit's R1-protocol tasks (r1_aime24, r1_aime25, r1_math500, r1_gpqa_diamond:
    R1's zero-shot prompt, the boxed answer read after </think>; GPQA's dataset is gated), its local
    distillkit_arith, a folder of your own (`include_path`), or lm-eval's built-ins by name (aime24,
    minerva_math500, ...: written for other prompt formats; a warning names those whose reported metric
    cannot read a boxed answer)."""
    include_path: Optional[str] = None
    """Extra folder of lm-eval task YAMLs."""
    backend: Literal["vllm", "hf", "local-completions"] = "vllm"
    num_samples: PositiveInt = 4
    """k samples per question; pass@1 is averaged over them (R1 used 64)."""
    temperature: NonNegativeFloat = 0.6
    top_p: float = Field(0.95, gt=0, le=1)
    max_gen_toks: PositiveInt = 32768
    gen_prefix: Optional[str] = "auto"
    """Text every answer is forced to start with, after the chat template (the R1 protocol forces
    "<think>\n"). auto: the recipe's `generate.prompts.prefill`, so teacher and students answer as the
    teacher was prompted for the traces and the students were trained; null: none."""
    limit: Optional[PositiveInt] = None
    """Evaluate only the first N questions of each task."""
    batch_size: str | int = "auto"
    model_args: dict[str, Any] = Field(default_factory=dict)
    """Extra lm-eval model_args, passed through."""
