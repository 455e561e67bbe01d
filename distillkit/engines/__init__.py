"""Teacher engines every stage may use: backends that sample (vLLM, an OpenAI-compatible server, transformers),
scorers that prefill text for soft labels, vLLM's server and its settings on CPU. `make_backend` builds the backend
a recipe's `teacher.backend` names."""

from __future__ import annotations

from distillkit.engines.base import Backend


def make_backend(gen_cfg) -> Backend:
    """The backend a GenerateConfig asks for (heavy libraries are imported here, not at module import)."""
    kind = gen_cfg.teacher.backend
    if kind == "vllm":
        from distillkit.engines.vllm import VllmBackend

        return VllmBackend.from_config(gen_cfg)
    if kind == "openai":
        from distillkit.engines.openai_http import OpenAIBackend

        return OpenAIBackend.from_config(gen_cfg)
    if kind == "transformers":
        from distillkit.engines.hf import HFBackend

        return HFBackend.from_config(gen_cfg)
    raise ValueError(f"unknown backend {kind!r}")
