"""tokenizer.json of each real tokenizer family, assembled as a dict from the packaged vocabularies and the
added-token tables, and serialized once per process."""

from __future__ import annotations

import functools
import json

from distillkit.testing.real_tokenizers.facts import (
    _QWEN25_ADDED,
    _R1_QWEN_ADDED,
    LLAMA3_PRETOKENIZE_REGEX,
    QWEN2_PRETOKENIZE_REGEX,
    QWEN_BPE_SIZE,
    _llama31_specials,
    _r1_llama_specials,
)
from distillkit.testing.real_tokenizers.sources import _llama3_ranks, _qwen3_added, _r1_qwen_gguf

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
