"""`REAL_MODELS`: the real teachers and students by Hub id, with their tokenizer builder and the config.json /
generation_config.json fields that matter to distillkit; `build_real_shaped_model` writes a tiny random model with
those fields and the real tokenizer.

Size: the table is most of this file; every value carries its source, which is why it is long.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.testing.real_tokenizers.builders import (
    llama3_tokenizer,
    qwen3_tokenizer,
    qwen25_tokenizer,
    r1_distill_llama_tokenizer,
    r1_distill_qwen_tokenizer,
)
from distillkit.testing.real_tokenizers.cache import _write_json

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
