"""A "scripted" tiny teacher: a random-size causal LM whose samples are a chosen token sequence.

End-to-end tests of whole recipes on real tokenizers (vocabularies of 128k-152k tokens) need a teacher
that, sampled the way a recipe samples it (vLLM, temperature 0.6, top-p 0.95), writes a known R1-style
completion, e.g. ``"Two plus three makes five.\\n</think>\\n\\nThe answer is $\\\\boxed{5}$."`` + EOS, so the
filter keeps it and the trainer sees real traces with soft labels. `build_scripted_model` builds one.

Construction (a bigram table over a chain of distinct tokens)
-------------------------------------------------------------
Let ``chain = [t0, t1, ..., tn]``: t0 is the last prompt token (e.g. the ``"\\n"`` of a pre-filled
``"<think>\\n"``), t1..t(n-1) the completion, tn the EOS. The model is a Qwen2, Qwen3 or Llama with hidden size
d = 64 (one head of head_dim 64; 64*k with k heads for chains longer than 64), intermediate size d, one
decoder layer (more layers, if asked for, are made to add nothing), every weight zero except:

* embeddings: row t_i = s * e_i (e_i the i-th basis vector of R^d); every other row 0;
* all RMSNorm weights 1 (Qwen3's per-head q/k norms too: they act on zero queries and keys);
* attention: everything 0 (q/k/v weights and Qwen2's q/k/v biases, o_proj). With o_proj = 0 the
  attention block adds exactly 0 to the residual whatever RoPE and the other positions do, so each
  position's output depends on its own token only: a prompt *ending* in t0 is all that matters;
* MLP (down(silu(gate(x)) * up(x))): gate = up = a * S with S the shift e_i -> e_(i+1) (i < n),
  down = b * I;
* lm_head: the embedding matrix (tied), or an identical copy (untied).

Forward pass for input t_i (i < n), hidden x = s e_i:
  input norm:  x / rms(x) = sqrt(d) e_i (RMSNorm removes s; eps is negligible);
  attention:   + 0;
  post-attn norm gives sqrt(d) e_i again, gate = up = c e_(i+1) with c = a sqrt(d) = 8,
  MLP out:     M e_(i+1) with M = b silu(c) c, so the residual is h = s e_i + M e_(i+1);
  final norm:  sqrt(d) (s e_i + M e_(i+1)) / sqrt(s^2 + M^2);
  logits:      t_(i+1): sqrt(d) s M / sqrt(s^2 + M^2);   t_i: sqrt(d) s^2 / sqrt(s^2 + M^2);
               every other token (other chain tokens, tokens outside the chain, padded rows): exactly 0.
With M = 1000 s the next token leads every other token by ``margin`` (s is chosen for that), the
previous token sits at margin/1000. Tokens outside the chain have zero embeddings, so in a prompt they
give x = 0, norms of 0 stay 0 (0 * rsqrt(eps)) and they contribute nothing anywhere.

Why sampling can only pick the scripted token
---------------------------------------------
With a gap of ``margin`` (default 40) over a vocabulary of V tokens, every other token has probability
at most exp(-margin / T) and all of them together at most V exp(-margin / T). For V = 152,064:
T = 1 (raw logprobs): 6.5e-13 (measured with transformers: 6.2e-13, the gap to non-chain tokens being
40.04; vLLM's float32 logprob of the scripted token is exactly 0.0); T = 0.6: 1.7e-24. The top-1
probability is 1 - that, far above top-p's 0.95, so nucleus sampling keeps the scripted token alone and
the sample is the chain, deterministically. The margin needed for a top-1 probability above 0.999 at
T = 1 is ln(V) + ln(999) ~ 18.8 for V = 152,064; a smaller ``margin`` makes the teacher's soft labels
less one-hot (the other tokens' raw logprobs are ~ -margin). The numbers are far from float limits:
logits ~ margin, hidden values <= 1000 s (bf16 weights work).

Limits: chain tokens must be distinct (a bigram table cannot say what follows a token the second
time); `chain_for` raises ValueError naming the repeated tokens, so the caller rewords. After tn the
model would repeat tn, so tn must be an id the engine stops on (the tokenizer's EOS by default).
"""

from __future__ import annotations

import math
import shutil
from collections import defaultdict
from pathlib import Path

# Files of a tokenizer folder that are not the tokenizer (never copied: our model's own are written).
_NOT_TOKENIZER_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
_NOT_TOKENIZER_NAMES = {"config.json", "generation_config.json", "model.safetensors.index.json",
                        "pytorch_model.bin.index.json"}
# Config keys the construction fixes (vocab size has its own argument).
_RESERVED_KEYS = {"intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "hidden_act", "vocab_size", "attention_bias", "mlp_bias", "pretraining_tp"}

GATE_PRE_ACTIVATION = 8.0  # c: silu(8) * 8 = 63.98
RESIDUAL_RATIO = 1000.0  # M / s: the MLP's output dominates the token's own embedding in the residual


def _repeats(ids: list[int]) -> dict[int, list[int]]:
    where: dict[int, list[int]] = defaultdict(list)
    for pos, t in enumerate(ids):
        where[t].append(pos)
    return {t: pos for t, pos in where.items() if len(pos) > 1}


def _describe_repeats(ids: list[int], tokenizer=None) -> str:
    parts = []
    for t, pos in _repeats(ids).items():
        text = ""
        if tokenizer is not None:
            try:
                text = f" {tokenizer.decode([t])!r}"
            except Exception:  # an id the tokenizer cannot decode: the id alone
                pass
        parts.append(f"{t}{text} at positions {pos}")
    return "; ".join(parts)


def chain_for(tokenizer, prompt_tail: str, completion: str, eos_id: int) -> list[int]:
    """The chain for `build_scripted_model`: the id of the last token of `prompt_tail`, the ids of
    `completion` (add_special_tokens=False) and `eos_id`.

    Raises ValueError naming the repeated tokens when they are not all distinct: reword the completion.
    `prompt_tail` must end the way the rendered prompt does in context (e.g. ``"<think>\\n"`` when
    `<think>` is an added token, so that the final ``"\\n"`` cannot merge with what precedes it).
    """
    tail = tokenizer.encode(prompt_tail, add_special_tokens=False)
    if not tail:
        raise ValueError(f"prompt_tail {prompt_tail!r} encodes to no token")
    body = tokenizer.encode(completion, add_special_tokens=False)
    if not body:
        raise ValueError("completion encodes to no token")
    chain = [int(tail[-1])] + [int(t) for t in body] + [int(eos_id)]
    if _repeats(chain):
        raise ValueError("scripted chain tokens must be distinct (prompt's last token, completion, EOS); "
                         f"repeated: {_describe_repeats(chain, tokenizer)}. Reword the completion.")
    return chain


def build_scripted_model(out_dir, tokenizer_dir, chain: list[int], arch: str = "qwen2",
                         vocab_size: int | None = None, config_overrides: dict | None = None,
                         margin: float = 40.0, dtype: str = "float32") -> Path:
    """Build and save (with the tokenizer folder's files copied in) a model that, after any prompt
    ending in ``chain[0]``, writes ``chain[1:]`` under greedy or T=0.6/top-p 0.95 sampling.

    `margin`: the logit gap between the scripted next token and every other token (see the module
    docstring). `vocab_size`: defaults to the tokenizer's size (and the chain's largest id + 1)
    rounded up to 64; pass the real padded size (e.g. 152064) to mimic a real checkpoint.
    `config_overrides`: config keys applied on top (max_position_embeddings, rope_theta,
    tie_word_embeddings (default True), bos/eos/pad_token_id, num_hidden_layers, hidden_size as a
    multiple of 64 of at least len(chain)); the keys the construction fixes are refused.
    `dtype`: the saved weights' dtype ("float32" or "bfloat16").
    """
    import torch
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    chain = [int(t) for t in chain]
    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
               "llama": (LlamaConfig, LlamaForCausalLM)}
    overrides = dict(config_overrides or {})
    _check_arguments(chain, margin, arch, sorted(classes), overrides)

    tokenizer_dir = Path(tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if vocab_size is None:
        vocab_size = (max(len(tok), max(chain) + 1) + 63) // 64 * 64
    bad = [t for t in chain if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"chain ids {bad} are outside the vocabulary (size {vocab_size})")

    d = int(overrides.pop("hidden_size", 64 * math.ceil(len(chain) / 64)))
    if d % 64 or d < len(chain):
        raise ValueError(f"hidden_size must be a multiple of 64 and at least len(chain)={len(chain)}, got {d}")
    common = dict(vocab_size=vocab_size, hidden_size=d, intermediate_size=d, num_hidden_layers=1,
                  num_attention_heads=d // 64, num_key_value_heads=d // 64, head_dim=64, hidden_act="silu",
                  max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common.update(overrides)
    config_class, model_class = classes[arch]
    config = config_class(**common)
    model = model_class(config)

    _set_scripted_weights(model, chain, d, margin)

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    model = model.to(getattr(torch, dtype))
    eos = config.eos_token_id
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy_tokenizer_files(tokenizer_dir, out_dir)
    model.save_pretrained(out_dir)
    return out_dir


def _check_arguments(chain: list[int], margin: float, arch: str, archs: list[str], overrides: dict) -> None:
    """The argument errors `build_scripted_model` can tell before loading the tokenizer."""
    if len(chain) < 2:
        raise ValueError("a chain needs at least the prompt's last token and one token to write")
    if _repeats(chain):
        raise ValueError(f"scripted chain tokens must be distinct; repeated: {_describe_repeats(chain)}")
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    if arch not in archs:
        raise ValueError(f"arch must be one of {archs}, got {arch!r}")
    reserved = sorted(_RESERVED_KEYS & overrides.keys())
    if reserved:
        raise ValueError(f"config_overrides may not set {reserved}: the construction fixes them")


def _set_scripted_weights(model, chain: list[int], d: int, margin: float) -> None:
    """The bigram table of the module docstring: every weight 0 except the norms, the chain's embedding rows, the MLP's
    shift e_i -> e_(i+1) and the head (the embeddings, tied or copied)."""
    import torch

    # s such that the gap sqrt(d) s (M - s) / sqrt(s^2 + M^2) with M = RESIDUAL_RATIO s is `margin`.
    r = RESIDUAL_RATIO
    s = margin * math.sqrt(1 + 1 / r ** 2) / (math.sqrt(d) * (1 - 1 / r))
    c = GATE_PRE_ACTIVATION
    a = c / math.sqrt(d)  # the normed input is sqrt(d) e_i, so gate = up = c e_(i+1)
    silu_c = c / (1 + math.exp(-c))
    b = r * s / (silu_c * c)  # MLP output M e_(i+1) with M = r s

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "norm" in name:  # input_layernorm, post_attention_layernorm, the final norm
                p.fill_(1.0)
        emb = model.get_input_embeddings().weight
        n = len(chain) - 1
        for i, t in enumerate(chain):
            emb[t, i] = s
        mlp = model.model.layers[0].mlp
        for i in range(n):  # shift e_i -> e_(i+1); e_n (the EOS) maps to nothing
            mlp.gate_proj.weight[i + 1, i] = a
            mlp.up_proj.weight[i + 1, i] = a
        mlp.down_proj.weight.copy_(torch.eye(d) * b)
        head = model.get_output_embeddings().weight
        if head.data_ptr() != emb.data_ptr():  # untied: the same matrix, copied
            head.copy_(emb)


def _copy_tokenizer_files(tokenizer_dir: Path, out_dir: Path) -> None:
    """Every file of the tokenizer folder except weights, model configs and hidden files."""
    for f in tokenizer_dir.iterdir():
        if (f.is_file() and f.name not in _NOT_TOKENIZER_NAMES
                and not f.name.endswith(_NOT_TOKENIZER_SUFFIXES) and not f.name.startswith(".")):
            shutil.copy2(f, out_dir / f.name)
