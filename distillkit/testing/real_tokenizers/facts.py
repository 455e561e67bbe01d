"""The cited facts the real-tokenizer builders are checked against: pre-tokenizer regexes, added tokens at their
real ids, chat-template markers, variant names.

Each table carries its sources next to it; the builders (`builders.py`) assemble folders from them and the
packaged vocabularies (`sources.py`).
"""

from __future__ import annotations

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
