"""Registries: each name a recipe may give (a teacher backend, a scorer, a KD divergence, a verifier) -> the class
or function that implements it, as "module:attribute", imported only when used.

Adding one is its own file (or function) plus one line in its table here: the recipe's choices are these tables'
keys (distillkit.config builds its `Literal`s from them), and the stages look the name up here instead of branching
on it. A lookup imports the implementing module only; those modules import vLLM, torch or an HTTP client inside the
functions that use them, so asking a backend class what it needs loads no engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

# generate.teacher.backend (and score.teacher.backend, generate.prescreen.backend): a class with the `Backend`
# protocol of distillkit/engines/base.py.
TEACHER_BACKENDS: dict[str, str] = {
    "vllm": "distillkit.engines.vllm:VllmBackend",
    "openai": "distillkit.engines.openai_http:OpenAIBackend",
    "transformers": "distillkit.engines.hf:HFBackend",
}

# score.teacher.backend: a class with the `Scorer` protocol of distillkit/engines/scorers.py (top-k logprobs of
# given text). A teacher backend without one here cannot score.
SCORERS: dict[str, str] = {
    "vllm": "distillkit.engines.scorers:VllmScorer",
    "openai": "distillkit.engines.scorers:ServerScorer",
    "transformers": "distillkit.engines.hf_scorer:TransformersScorer",  # full logits: the scorer of sampled labels
}

# train.kd.divergence: a function (teacher_logp, student_logp, beta) -> divergence per row, (..., K), (..., K) -> (...),
# as in distillkit/train/divergences.py.
DIVERGENCES: dict[str, str] = {
    "forward_kl": "distillkit.train.divergences:forward_kl",
    "reverse_kl": "distillkit.train.divergences:reverse_kl",
    "jsd": "distillkit.train.divergences:jsd",
}

# filter.verifiers[].kind: a `Verifier` of distillkit/verify/verifiers/base.py (its parameters in its `Params`).
VERIFIERS: dict[str, str] = {
    "truncation": "distillkit.verify.verifiers.readability:TruncationVerifier",
    "format": "distillkit.verify.verifiers.format:FormatVerifier",
    "math": "distillkit.verify.verifiers.math:MathVerifier",
    "code": "distillkit.verify.verifiers.code:CodeVerifier",
    "language": "distillkit.verify.verifiers.readability:LanguageVerifier",
    "repetition": "distillkit.verify.verifiers.readability:RepetitionVerifier",
    "length": "distillkit.verify.verifiers.readability:LengthVerifier",
    "judge": "distillkit.verify.verifiers.judge:JudgeVerifier",
}


def resolve(table: dict[str, str], name: str, what: str) -> Any:
    """What `table` registers under `name` (its module imported now); an unknown name is a ValueError listing
    the choices."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def load_backend(name: str):
    """The teacher backend class registered as `name` (no engine is started or imported)."""
    return resolve(TEACHER_BACKENDS, name, "teacher backend")


def load_scorer(name: str):
    """The scorer class registered for teacher backend `name`."""
    return resolve(SCORERS, name, "scorer")


def load_divergence(name: str):
    """The KD divergence function registered as `name`."""
    return resolve(DIVERGENCES, name, "divergence")


def load(kind: str):
    """The verifier class registered as `kind`."""
    return resolve(VERIFIERS, kind, "verifier")


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def params_model(kind: str) -> type[BaseModel]:
    """The pydantic model of a verifier's parameters (each verifier class defines `Params`)."""
    cls = load(kind)
    return getattr(cls, "Params", NoParams)


def validate_spec(kind: str, params: dict[str, Any]) -> None:
    """Raise ValueError with a helpful message for an unknown kind or bad parameters."""
    try:
        model = params_model(kind)  # an unknown kind: ValueError listing the choices
    except ImportError:
        return  # implementation not importable here; parameters are checked when the filter runs
    try:
        model.model_validate(params)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in e.errors())
        raise ValueError(f"bad parameters for verifier {kind!r}: {msgs}") from None


def build(kind: str, params: dict[str, Any] | None = None, num_workers: int = 1):
    """An instance of verifier `kind` with validated `params` (a `Verifier`; close it when done)."""
    return load(kind)(num_workers=num_workers, **(params or {}))
