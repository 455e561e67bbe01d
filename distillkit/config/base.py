"""What every config section shares: the strict base model, the stage names, the registered names a recipe may
choose, and the defaults two stages use (R1's prompt, sampled soft labels' draws)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from distillkit.registry import DIVERGENCES, TEACHER_BACKENDS


STAGES = ("generate", "filter", "score", "train", "evaluate", "publish")
DEFAULT_STAGES = ("generate", "filter", "train", "evaluate", "publish")
"""`score` runs only when a recipe lists it (soft labels for traces that have none, or another teacher's)."""


# The user turn of the R1 evaluation protocol. "{problem}" is substituted with str.replace, so
# literal braces such as \boxed{} need no escaping in recipes.
R1_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."


# The choices of registered names are the registries' keys (distillkit/registry.py), so registering one there makes
# it a valid value here; a Literal keeps the choices in the schema and in pydantic's error for an unknown name.
TeacherBackendName = Literal[tuple(TEACHER_BACKENDS)]
DivergenceName = Literal[tuple(DIVERGENCES)]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors; `renamed` maps old keys to new ones."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
    renamed: ClassVar[dict[str, str]] = {}


SOFT_LABEL_SAMPLES = 32
"""Default draws per position of sampled soft labels: ~13 bytes per token on real traces, a third of top-20's
(see `ScoreConfig.soft_label_samples`)."""
