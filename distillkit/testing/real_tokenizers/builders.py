"""The public tokenizer builders: one function per real tokenizer family, each writing (once, cached) a Hugging Face
folder of tokenizer.json, tokenizer_config.json (with the real chat template) and special_tokens_map.json."""

from __future__ import annotations

import shutil
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.testing.real_tokenizers.cache import _build_cached, _cache_key, _write_json, tokenizers_root
from distillkit.testing.real_tokenizers.facts import (
    _QWEN25_ADDED,
    _QWEN25_ADDITIONAL_SPECIAL,
    _QWEN25_BASE_SYSTEM,
    _QWEN25_INSTRUCT_SYSTEM,
    _QWEN25_MATH_SYSTEM,
    _R1_QWEN_ADDED,
    LLAMA3_VARIANTS,
    QWEN25_VARIANTS,
    _llama31_specials,
    _r1_llama_specials,
)
from distillkit.testing.real_tokenizers.sources import (
    _qwen3_added,
    _qwen25_template,
    _r1_template,
    _trl_template,
    gemma3_gguf_path,
)
from distillkit.testing.real_tokenizers.tokenizer_json import _tokenizer_json_text

# ---------------------------------------------------------------------------------------------------------
# Writing a folder
# ---------------------------------------------------------------------------------------------------------
# Folders whose tokenizer.json is byte-identical (they differ in tokenizer_config.json only).
_SHARED_TOKENIZER_JSON = {
    "r1-qwen": ["r1-distill-qwen", "r1-distill-qwen-think"],
    "qwen2.5": [f"qwen2.5-{v}" for v in QWEN25_VARIANTS],
    "qwen3": ["qwen3"],
    "llama3": [f"llama-{v}" for v in LLAMA3_VARIANTS],
    "r1-llama": ["r1-distill-llama", "r1-distill-llama-think"],
}


def _write_tokenizer_json(out: Path, kind: str) -> None:
    # A finished sibling folder already holds the same file: copying it skips deriving the BPE again.
    for name in _SHARED_TOKENIZER_JSON[kind]:
        sibling = tokenizers_root() / f"{name}-{_cache_key(name)}" / "tokenizer.json"
        if sibling.is_file():
            shutil.copyfile(sibling, out / "tokenizer.json")
            return
    (out / "tokenizer.json").write_text(_tokenizer_json_text(kind), encoding="utf-8")


def _write_folder(out: Path, kind: str, config: dict, special_map: dict) -> None:
    _write_tokenizer_json(out, kind)
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", special_map)


def _deepseek_added_token(content: str) -> dict:
    # DeepSeek's tokenizer_config.json writes bos/eos/pad in this legacy AddedToken form.
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def _deepseek_config(added: list[tuple[int, str, bool]], template: str) -> tuple[dict, dict]:
    """tokenizer_config.json / special_tokens_map.json of an R1-Distill repo.

    Fields as in DeepSeek's files (R1-Distill-Llama-8B's quoted in an AWS Bedrock guide and a Hub API
    snapshot; R1-Distill-Qwen-32B's on jishuzhan.net): add_bos_token true, pad_token = eos
    "<｜end▁of▁sentence｜>", model_max_length 16384, legacy true. The pad = eos choice is DeepSeek's (the GGUF's
    pad 151654 was added by whoever converted it); it is the trap ENVIRONMENT.md warns about, kept on purpose.
    """
    bos, eos = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": s} for tid, c, s in added},
        "bos_token": _deepseek_added_token(bos),
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": _deepseek_added_token(eos),
        "legacy": True,
        "model_max_length": 16384,
        "pad_token": _deepseek_added_token(eos),
        "sp_model_kwargs": {},
        # Real repos say "LlamaTokenizerFast"; see the module docstring for why this folder does not.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    special_map = {key: {"content": value, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False} for key, value in (("bos_token", bos), ("eos_token", eos),
                                                                  ("pad_token", eos))}
    return config, special_map


# ---------------------------------------------------------------------------------------------------------
# Public builders
# ---------------------------------------------------------------------------------------------------------
def r1_distill_qwen_tokenizer(think_prefill: bool = False) -> Path:
    """Tokenizer folder of deepseek-ai/DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B,32B} (151,665 tokens).

    bos <｜begin▁of▁sentence｜> 151646 (added in front of every encode), eos = pad <｜end▁of▁sentence｜> 151643,
    <think>/<｜User｜>/<｜Assistant｜> are *not* special (skip_special_tokens keeps them). `think_prefill=False`
    gives the chat template of the 2025-01-20 release (in the GGUF): the generation prompt is '<｜Assistant｜>'.
    `think_prefill=True` gives the template the Hub repos ship since 2025-02, whose generation prompt is
    '<｜Assistant｜><think>\\n' (what TRL recognises as the R1-Distill template).
    """
    name = "r1-distill-qwen" + ("-think" if think_prefill else "")

    def build(out: Path) -> None:
        config, special_map = _deepseek_config(_R1_QWEN_ADDED, _r1_template(think_prefill))
        _write_folder(out, "r1-qwen", config, special_map)

    return _build_cached(name, build)


def _qwen_config(added: list[tuple[int, str, bool]], template: str, eos: str) -> tuple[dict, dict]:
    """tokenizer_config.json / special_tokens_map.json of Qwen's repos (Qwen2.5 and Qwen3 alike): no BOS, pad
    <|endoftext|>, Qwen2.5's 13 additional special tokens, 131072 context."""
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": s} for tid, c, s in added},
        "additional_special_tokens": _QWEN25_ADDITIONAL_SPECIAL,
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special_map = {"additional_special_tokens": _QWEN25_ADDITIONAL_SPECIAL,
                   "eos_token": {"content": eos, "lstrip": False, "normalized": False, "rstrip": False,
                                 "single_word": False},
                   "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False}}
    return config, special_map


def qwen25_tokenizer(variant: str) -> Path:
    """Tokenizer folder of Qwen2.5 models (151,665 tokens, no BOS).

    variant: "base" (Qwen2.5-14B/32B...: eos <|endoftext|>, default system "You are a helpful assistant."),
    "instruct" (eos <|im_end|>, "You are Qwen, created by Alibaba Cloud. ..."), "math-base" (Qwen2.5-Math-1.5B/7B:
    eos <|endoftext|>) or "math-instruct" (eos <|im_end|>); the Math ones default to the "Please reason step by
    step, and put your final answer within \\boxed{}." system prompt. pad is <|endoftext|> for all.
    """
    if variant not in QWEN25_VARIANTS:
        raise DistillkitError(f"qwen25_tokenizer variant {variant!r} is unknown; choose one of {list(QWEN25_VARIANTS)}")
    system = {"base": _QWEN25_BASE_SYSTEM, "instruct": _QWEN25_INSTRUCT_SYSTEM}.get(variant, _QWEN25_MATH_SYSTEM)
    # eos per Qwen2.5 tokenizer_config.json: base models end documents with <|endoftext|>, chat models turns
    # with <|im_end|> (Qwen2.5-0.5B-Instruct copy: eos "<|im_end|>", pad "<|endoftext|>", bos null).
    eos = "<|im_end|>" if variant.endswith("instruct") else "<|endoftext|>"

    def build(out: Path) -> None:
        config, special_map = _qwen_config(_QWEN25_ADDED, _qwen25_template(system), eos)
        _write_folder(out, "qwen2.5", config, special_map)

    return _build_cached(f"qwen2.5-{variant}", build)


def qwen3_tokenizer() -> Path:
    """Tokenizer folder of the Qwen3 hybrid-thinking models (Qwen/Qwen3-0.6B, -1.7B, -4B, -8B, -14B, -32B;
    151,669 tokens, no BOS).

    Qwen2.5's BPE (the same 151,643 tokens and merges) with Qwen3's 26 added tokens: <think> 151667 and
    </think> 151668 are normal (special=false) tokens, where R1-Distill-Qwen has </think> at 151649, which
    Qwen3 calls <|box_end|>. eos <|im_end|>, pad <|endoftext|>. The chat template is Qwen3's: it switches
    thinking with `enable_thinking` (false adds an empty "<think>\n\n</think>\n\n" to the generation prompt)
    and rewrites assistant turns: the reasoning of turns before the last user message is dropped, and the
    last turn's is re-spaced ("<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + answer).
    """

    def build(out: Path) -> None:
        config, special_map = _qwen_config(_qwen3_added(), _trl_template("qwen3"), "<|im_end|>")
        _write_folder(out, "qwen3", config, special_map)

    return _build_cached("qwen3", build)


def _llama_config(specials, eos: str, template: str | None) -> tuple[dict, dict]:
    """tokenizer_config.json of Meta's Llama 3.x repos (bos <|begin_of_text|>, no pad, 131072 context)."""
    config = {
        "added_tokens_decoder": {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                            "single_word": False, "special": s} for tid, c, s in specials},
        "bos_token": specials[0][1],
        "clean_up_tokenization_spaces": True,
        "eos_token": eos,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if template is not None:
        config["chat_template"] = template
    return config, {"bos_token": specials[0][1], "eos_token": eos}


def llama3_tokenizer(variant: str) -> Path:
    """Tokenizer folder of Llama 3.x (128,256 tokens, BOS <|begin_of_text|> added in front of every encode).

    variant: "3.1-base" (meta-llama/Llama-3.1-8B: eos <|end_of_text|>, no chat template), "3.1-instruct"
    (Llama-3.1-8B-Instruct: eos <|eot_id|>, Llama 3.1 template) or "3.3-instruct" (Llama-3.3-70B-Instruct: same
    tokenizer and template as 3.1 Instruct).
    """
    if variant not in LLAMA3_VARIANTS:
        raise DistillkitError(f"llama3_tokenizer variant {variant!r} is unknown; choose one of {list(LLAMA3_VARIANTS)}")
    instruct = variant.endswith("instruct")

    def build(out: Path) -> None:
        specials = _llama31_specials()
        config, special_map = _llama_config(specials, "<|eot_id|>" if instruct else "<|end_of_text|>",
                                            _trl_template("llama3_1") if instruct else None)
        _write_folder(out, "llama3", config, special_map)

    return _build_cached(f"llama-{variant}", build)


def r1_distill_llama_tokenizer(think_prefill: bool = False) -> Path:
    """Tokenizer folder of deepseek-ai/DeepSeek-R1-Distill-Llama-{8B,70B} (128,256 tokens).

    Llama 3's BPE with DeepSeek's specials: bos <｜begin▁of▁sentence｜> 128000, eos = pad <｜end▁of▁sentence｜>
    128001, <｜User｜> 128011, <｜Assistant｜> 128012, <think> 128013, </think> 128014 (see _R1_LLAMA_OVERRIDES for
    which ids are verified). The chat template is the R1-Distill one, `think_prefill` as in
    `r1_distill_qwen_tokenizer`.
    """
    name = "r1-distill-llama" + ("-think" if think_prefill else "")

    def build(out: Path) -> None:
        specials = _r1_llama_specials()
        config, special_map = _deepseek_config(specials, _r1_template(think_prefill))
        _write_folder(out, "r1-llama", config, special_map)

    return _build_cached(name, build)


def gemma3_tokenizer() -> Path:
    """Tokenizer folder of Gemma 3 (262,144 tokens, sentencepiece-style: `▁` for spaces, `<0xNN>` byte pieces),
    read by transformers from the GGUF's metadata (about a minute, so cached as a folder)."""

    def build(out: Path) -> None:
        from distillkit.models import gguf_tokenizer

        gguf_tokenizer(gemma3_gguf_path()).save_pretrained(out)

    return _build_cached("gemma3", build)
