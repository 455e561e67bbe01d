"""The teacher a stage runs (generate samples with it, score labels with it): its model, backend and engine options."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from distillkit.config.base import StrictModel, TeacherBackendName


class VllmConfig(StrictModel):
    """Options of the vLLM offline engine (passed through to `vllm.LLM`)."""

    tensor_parallel_size: PositiveInt = 1
    """GPUs per model replica (tensor parallel)."""
    data_parallel_size: PositiveInt = 1
    """Independent replicas; prompts are split between them."""
    pipeline_parallel_size: PositiveInt = 1
    """Pipeline stages; with several nodes use distributed_executor_backend=ray."""
    distributed_executor_backend: Optional[Literal["mp", "ray"]] = None
    """`ray` for multi-node runs; `mp` (or unset) on one node."""
    max_model_len: Optional[PositiveInt] = None
    """Context length of the engine (prompt + completion); unset = the model's."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of GPU memory vLLM may take."""
    enforce_eager: bool = False
    """Disable CUDA graphs (always on for CPU)."""
    dtype: str = "auto"
    """Weights dtype: auto, bfloat16, float16, float32. auto = the checkpoint's dtype, except on a CPU
    without native bf16 (no AVX512-BF16/AMX), where distillkit picks float32 (2.7x faster than emulated
    bf16; twice the memory: set bfloat16 to trade speed for memory)."""
    max_logprobs: PositiveInt = 20
    """Largest top-k of logprobs the engine will return."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Anything else for `vllm.LLM(...)`, passed through unchanged."""


class OpenAIEndpointConfig(StrictModel):
    """A teacher behind an OpenAI-compatible server (vllm serve, SGLang, a hosted R1 API)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Server base URL including /v1."""
    model: Optional[str] = None
    """Model name the server expects; defaults to generate.teacher.model."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (never written anywhere)."""
    max_concurrency: PositiveInt = 16
    """Requests in flight at once."""
    timeout_s: PositiveFloat = 600.0
    """Per-request timeout in seconds."""
    max_retries: NonNegativeInt = 5
    """Retries with exponential backoff on timeouts, 429 and 5xx."""
    api: Literal["chat", "completions"] = "chat"
    """chat: /v1/chat/completions; completions: render the template locally and use /v1/completions."""
    serve: bool = False
    """Start a local vLLM server for `teacher.model` on a free port (base_url is then ignored) and stop it
    at the end: the served path on one machine, e.g. to keep the teacher in its own process."""


class TeacherConfig(StrictModel):
    model: str = "builtin:smollm2-135m-instruct"
    """Hub id, local folder, .gguf file, or builtin:smollm2-135m-instruct (shipped in a PyPI package)."""
    backend: TeacherBackendName = "vllm"
    """vllm: offline engine (default); openai: an OpenAI-compatible endpoint; transformers: generate()."""
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    openai: OpenAIEndpointConfig = Field(default_factory=OpenAIEndpointConfig)
