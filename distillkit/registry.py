"""Verifier registry: names -> parameter models (light) and implementations (imported on use)."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

# name -> "module:Class". Modules are imported only when a filter actually runs.
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


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def params_model(kind: str) -> type[BaseModel]:
    """The pydantic model of a verifier's parameters (each verifier class defines `Params`)."""
    cls = load(kind)
    return getattr(cls, "Params", NoParams)


def load(kind: str):
    if kind not in VERIFIERS:
        raise ValueError(f"unknown verifier {kind!r}; choose one of {sorted(VERIFIERS)}")
    module, _, name = VERIFIERS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def validate_spec(kind: str, params: dict[str, Any]) -> None:
    """Raise ValueError with a helpful message for an unknown kind or bad parameters."""
    if kind not in VERIFIERS:
        raise ValueError(f"unknown verifier {kind!r}; choose one of {sorted(VERIFIERS)}")
    try:
        model = params_model(kind)
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
