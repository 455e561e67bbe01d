"""Teacher engines every stage may use: backends that sample (vLLM, an OpenAI-compatible server, transformers),
scorers that prefill text for soft labels, vLLM's server and its settings on CPU. `make_backend` builds the backend
a recipe's `teacher.backend` names (the names are registered in `distillkit.registry.TEACHER_BACKENDS`)."""

from __future__ import annotations

from distillkit.engines.base import Backend
from distillkit.registry import load_backend


def make_backend(gen_cfg) -> Backend:
    """The backend a GenerateConfig asks for (heavy libraries are imported by its `from_config`, not here)."""
    return load_backend(gen_cfg.teacher.backend).from_config(gen_cfg)
