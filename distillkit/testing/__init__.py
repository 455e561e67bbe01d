"""Tiny models and tokenizers built locally (no downloads) for tests, notebooks and benchmarks.

The shapes respect vLLM's CPU kernels (head_dim 64). The tokenizer is a byte-level BPE trained on
a few hundred synthetic sentences; `<think>`/`</think>` are added as *normal* tokens because
decoding with skip_special_tokens (lm-eval does) would silently drop special ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from distillkit.models import CHATML_REASONING_TEMPLATE

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
THINK_TOKENS = ["<think>", "</think>"]


def _corpus(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ("the a of and to in is it that for on with as was he she they we you his her their apples "
             "pears has have had bought sold gives gave each more less total how many what answer step "
             "reason please put final within boxed so then first next add subtract multiply divide equals "
             "number numbers problem solve think therefore minus plus times left right").split()
    lines = []
    for _ in range(600):
        a, b = rng.randint(0, 999), rng.randint(0, 99)
        lines.append(" ".join(rng.choices(words, k=rng.randint(5, 14))) + f" {a} + {b} = {a + b}.")
        lines.append(f"Step {rng.randint(1, 9)}: {a} * {b} = {a * b}, so the answer is \\boxed{{{a * b}}}.")
    lines.append("Please reason step by step, and put your final answer within \\boxed{}.")
    return lines


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512):
    """Train and save a small byte-level BPE tokenizer with a ChatML reasoning template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Split digits like Qwen2 does, so transformers' qwen2 tokenizer class (which it may force for a
    # `model_type: qwen2` folder) tokenizes the same way.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<|pad|>", unk_token=None)
    fast.add_tokens(THINK_TOKENS, special_tokens=False)
    fast.chat_template = CHATML_REASONING_TEMPLATE
    out_dir = Path(out_dir)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: str | Path, arch: str = "qwen2", num_layers: int = 2, hidden_size: int = 128,
                     vocab_size: int | None = None, seed: int = 0, tokenizer_dir: str | Path | None = None):
    """A randomly initialized Qwen2 or Llama causal LM (head_dim 64) saved with its tokenizer.

    `vocab_size` larger than the tokenizer's mimics padded vocabularies (Qwen: 151,936 vs 152,064).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tok = build_tiny_tokenizer(out_dir)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        tok.save_pretrained(out_dir)
    vocab = vocab_size or (len(tok) + 63) // 64 * 64
    common = dict(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                  num_hidden_layers=num_layers, num_attention_heads=hidden_size // 64,
                  num_key_value_heads=hidden_size // 64, head_dim=64, max_position_embeddings=2048,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                  tie_word_embeddings=True)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"arch must be qwen2 or llama, got {arch!r}")
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    # Some loaders key off tokenizer_config's class; record what we built.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def load_file_module(path: str | Path, name: str):
    """The Python file at `path` imported as module `name`: a bench/ script, or an lm-eval task's utils.py
    (neither is part of an importable package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
