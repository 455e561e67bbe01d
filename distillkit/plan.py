"""Memory planner: estimate peak GPU memory of training and generation from a recipe, before a GPU is used.

The estimate is arithmetic over the model's shape (no weights are loaded), so it works for Hub ids
that are not downloaded: shapes of the R1-distill students and teachers are listed below, and a
local folder's config.json is read. Components (bytes):

training
  weights      full: 2/param (bf16); lora: 2/param; qlora: 0.5/param + ~0.016 for double-quantized
               absmax constants, embeddings and output head kept in bf16 (bitsandbytes skips them)
  trainable    full: grads 2 + fp32 master 4 + AdamW 8 = 14/param (mixed precision, on top of weights);
               lora/qlora: adapter params in fp32 with grads and AdamW = 16/param
  activations  per token and layer, bf16, SDPA/flash attention (no T x T scores):
               2 * (7H + 2*kv_dim + 4I) bytes without checkpointing; with checkpointing only each
               layer's input (2H) is kept, plus one layer recomputed at a time
  logits       plain cross-entropy over the full vocabulary: ~16 bytes/token/vocab entry (bf16
               logits, an fp32 copy, fp32 log-softmax and their gradients); the chunked KD loss of
               distillkit bounds this to `kd.chunk_size` tokens at a time
  overhead     1 GiB (CUDA context, allocator slack) + 8%

generation (vLLM)
  weights      2/param divided over tensor_parallel_size
  kv cache     2 (K and V) * layers * kv_heads * head_dim * 2 bytes per token, for one full-length
               sequence (prompt + max_tokens) at least; vLLM uses the rest of
               gpu_memory_utilization for more concurrent sequences

Checked against published figures in tests/test_plan.py (Unsloth's Hugging Face + FA2 QLoRA
context limits for Llama-3.1-8B; the 128 KiB/token KV cache of Llama-3-8B).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from distillkit.config import RecipeConfig
from distillkit.errors import DistillkitError
from distillkit.registry import load_backend

log = logging.getLogger(__name__)

GiB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int | None = None

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim_head

    def linear_params_per_layer(self) -> dict[str, int]:
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        q = self.heads * self.dim_head
        return {"q_proj": h * q, "k_proj": h * kv, "v_proj": h * kv, "o_proj": q * h,
                "gate_proj": h * i, "up_proj": h * i, "down_proj": i * h}

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.embed_params + self.layers * (sum(self.linear_params_per_layer().values()) + 2 * self.hidden)


# Shapes of the models the recipes name (from their config.json on the Hub).
_QWEN_1_5B = ModelShape(1536, 28, 12, 2, 8960, 151936, tied=True)
_QWEN_7B = ModelShape(3584, 28, 28, 4, 18944, 152064, tied=False)
_QWEN_14B = ModelShape(5120, 48, 40, 8, 13824, 152064, tied=False)
_QWEN_32B = ModelShape(5120, 64, 40, 8, 27648, 152064, tied=False)
_LLAMA_8B = ModelShape(4096, 32, 32, 8, 14336, 128256, tied=False)
_LLAMA_70B = ModelShape(8192, 80, 64, 8, 28672, 128256, tied=False)
# Qwen3 sets head_dim 128 whatever hidden / heads is (0.6B: 1024 / 16 = 64); Llama 3.2 ties its embeddings.
_QWEN3_8B = ModelShape(4096, 36, 32, 8, 12288, 151936, tied=False, head_dim=128)
_QWEN3_32B = ModelShape(5120, 64, 64, 8, 25600, 151936, tied=False, head_dim=128)
KNOWN_SHAPES: dict[str, ModelShape] = {
    "qwen/qwen2.5-math-1.5b": _QWEN_1_5B,
    "qwen/qwen2.5-1.5b-instruct": _QWEN_1_5B,
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": ModelShape(1536, 28, 12, 2, 8960, 151936, tied=False),
    "qwen/qwen2.5-math-7b": _QWEN_7B,
    "qwen/qwen2.5-7b-instruct": _QWEN_7B,
    "deepseek-ai/deepseek-r1-distill-qwen-7b": _QWEN_7B,
    "meta-llama/llama-3.1-8b": _LLAMA_8B,
    "meta-llama/llama-3.1-8b-instruct": _LLAMA_8B,
    "deepseek-ai/deepseek-r1-distill-llama-8b": _LLAMA_8B,
    "qwen/qwen2.5-14b": _QWEN_14B,
    "deepseek-ai/deepseek-r1-distill-qwen-14b": _QWEN_14B,
    "qwen/qwen2.5-32b": _QWEN_32B,
    "qwen/qwq-32b": _QWEN_32B,
    "deepseek-ai/deepseek-r1-distill-qwen-32b": _QWEN_32B,
    "meta-llama/llama-3.3-70b-instruct": _LLAMA_70B,
    "deepseek-ai/deepseek-r1-distill-llama-70b": _LLAMA_70B,
    "builtin:smollm2-135m-instruct": ModelShape(576, 30, 9, 3, 1536, 49152, tied=True),
    "qwen/qwen3-0.6b": ModelShape(1024, 28, 16, 8, 3072, 151936, tied=True, head_dim=128),
    "qwen/qwen3-1.7b": ModelShape(2048, 28, 16, 8, 6144, 151936, tied=True, head_dim=128),
    "qwen/qwen3-4b": ModelShape(2560, 36, 32, 8, 9728, 151936, tied=True, head_dim=128),
    "qwen/qwen3-8b": _QWEN3_8B,
    "qwen/qwen3-32b": _QWEN3_32B,
    "meta-llama/llama-3.2-1b": ModelShape(2048, 16, 32, 8, 8192, 128256, tied=True, head_dim=64),
    "meta-llama/llama-3.2-3b": ModelShape(3072, 28, 24, 8, 8192, 128256, tied=True, head_dim=128),
}


def model_shape(spec: str) -> ModelShape:
    """Shape of a model argument: a known Hub id, a local folder (config.json), or a builtin name."""
    known = KNOWN_SHAPES.get(spec.lower())
    if known:
        return known
    cfg_path = Path(spec) / "config.json"
    if cfg_path.exists():
        c = json.loads(cfg_path.read_text())
        c = c.get("text_config", c)
        return ModelShape(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                          c.get("num_key_value_heads", c["num_attention_heads"]), c["intermediate_size"],
                          c["vocab_size"], bool(c.get("tie_word_embeddings", False)), c.get("head_dim"))
    raise DistillkitError(
        f"the planner does not know the shape of {spec!r}; use a local folder with config.json "
        f"or one of {sorted(KNOWN_SHAPES)}")


def _layers_kept(shape: ModelShape, keep_layers) -> int:
    if keep_layers is None:
        return shape.layers
    if isinstance(keep_layers, list):
        return len(keep_layers)
    if keep_layers == "every_other":
        return (shape.layers + 1) // 2
    if isinstance(keep_layers, str) and keep_layers.split(":", 1)[0] in ("first", "last", "auto"):
        n = keep_layers.split(":", 1)[1]
        return min(shape.layers, int(n)) if n.isdigit() else shape.layers
    return shape.layers


@dataclass
class TrainEstimate:
    weights: float
    trainable_states: float
    activations: float
    logits: float
    overhead: float
    trainable_params: int
    total_params: int

    @property
    def total(self) -> float:
        return self.weights + self.trainable_states + self.activations + self.logits + self.overhead


def lora_params(shape: ModelShape, r: int, target_modules: str | list[str] = "all-linear") -> int:
    per_layer = shape.linear_params_per_layer()
    dims = {"q_proj": (shape.hidden, shape.heads * shape.dim_head), "k_proj": (shape.hidden, shape.kv_dim),
            "v_proj": (shape.hidden, shape.kv_dim), "o_proj": (shape.heads * shape.dim_head, shape.hidden),
            "gate_proj": (shape.hidden, shape.intermediate), "up_proj": (shape.hidden, shape.intermediate),
            "down_proj": (shape.intermediate, shape.hidden)}
    names = list(per_layer) if target_modules == "all-linear" else [m for m in target_modules if m in dims]
    return shape.layers * sum(r * (dims[n][0] + dims[n][1]) for n in names)


def estimate_training(shape: ModelShape, method: str = "lora", seq_len: int = 4096, micro_batch: int = 1,
                      lora_r: int = 16, target_modules: str | list[str] = "all-linear",
                      gradient_checkpointing: bool = True, kd_chunk: int | None = None,
                      shard_over: int = 1) -> TrainEstimate:
    """Peak bytes of one training step on one GPU (see the module docstring for each term)."""
    tokens = seq_len * micro_batch
    h, i, kvd = shape.hidden, shape.intermediate, shape.kv_dim
    body = shape.params - shape.embed_params
    if method == "qlora":
        weights = body * (0.5 + 0.016) + shape.embed_params * 2
    else:
        weights = shape.params * 2
    if method == "full":
        trainable = shape.params
        states = trainable * 14
    else:
        trainable = lora_params(shape, lora_r, target_modules)
        states = trainable * 16
    if shard_over > 1:  # FSDP / ZeRO-3 shard weights (frozen base weights too), grads and optimizer states
        weights, states = weights / shard_over, states / shard_over
    per_layer_full = 2 * (7 * h + 2 * kvd + 4 * i)
    if gradient_checkpointing:
        activations = tokens * (shape.layers * 2 * h + per_layer_full)
    else:
        activations = tokens * shape.layers * per_layer_full
    logits = min(tokens, kd_chunk or tokens) * shape.vocab * 16
    overhead = 1 * GiB + 0.08 * (weights + states + activations + logits)
    return TrainEstimate(weights, states, activations, logits, overhead, trainable, shape.params)


def kv_bytes_per_token(shape: ModelShape, dtype_bytes: int = 2) -> int:
    return 2 * shape.layers * shape.kv_dim * dtype_bytes


@dataclass
class GenerateEstimate:
    weights: float
    kv_one_sequence: float
    kv_bytes_per_token: int
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_one_sequence + self.overhead


def estimate_generation(shape: ModelShape, seq_len: int, tensor_parallel: int = 1) -> GenerateEstimate:
    per_tok = kv_bytes_per_token(shape)
    weights = shape.params * 2 / tensor_parallel
    kv = per_tok * seq_len / tensor_parallel
    return GenerateEstimate(weights, kv, per_tok, 1 * GiB + 0.05 * weights)


@dataclass
class Plan:
    gpu_memory_gib: float
    num_gpus: int
    train: dict | None
    generate: dict | None
    warnings: list[str]


def plan_recipe(cfg: RecipeConfig) -> Plan:
    """Estimate both stages of a recipe against its hardware section; warnings say what will not fit."""
    gpu_gib = cfg.hardware.gpu_memory_gib
    warnings: list[str] = []
    train = generate = None
    t = cfg.train
    if "train" in cfg.stages:
        shape = model_shape(t.student.model)
        layers = _layers_kept(shape, t.student.keep_layers)
        shape = ModelShape(**{**asdict(shape), "layers": layers})
        shard = t.num_processes or cfg.hardware.num_gpus
        sharded = bool(t.accelerate_config) and any(k in t.accelerate_config.lower() for k in ("fsdp", "zero3"))
        est = estimate_training(
            shape, t.method, seq_len=t.max_length or 4096, micro_batch=t.per_device_train_batch_size,
            lora_r=t.lora.r, target_modules=t.lora.target_modules,
            gradient_checkpointing=t.gradient_checkpointing,
            kd_chunk=t.kd.chunk_size if t.kd.enabled else None, shard_over=shard if sharded else 1)
        train = {k: round(v / GiB, 2) for k, v in {
            "weights": est.weights, "trainable_states": est.trainable_states, "activations": est.activations,
            "logits": est.logits, "overhead": est.overhead, "total": est.total}.items()}
        train["trainable_params_m"] = round(est.trainable_params / 1e6, 1)
        train["total_params_b"] = round(est.total_params / 1e9, 2)
        if est.total / GiB > gpu_gib:
            warnings.append(
                f"train: ~{est.total / GiB:.1f} GiB per GPU exceeds {gpu_gib:g} GiB; lower train.max_length "
                f"or per_device_train_batch_size, enable gradient_checkpointing or kd (chunked loss), "
                f"use method: qlora, or shard with an FSDP/ZeRO-3 accelerate config")
    if "generate" in cfg.stages and load_backend(cfg.generate.teacher.backend).uses_vllm_engine:
        g = cfg.generate
        shape = model_shape(g.teacher.model)
        seq = g.teacher.vllm.max_model_len or g.sampling.max_tokens + 1024  # + room for the prompt
        est = estimate_generation(shape, seq, g.teacher.vllm.tensor_parallel_size)
        budget = gpu_gib * g.teacher.vllm.gpu_memory_utilization
        generate = {"weights": round(est.weights / GiB, 2), "kv_one_sequence": round(est.kv_one_sequence / GiB, 2),
                    "kv_kib_per_token": round(est.kv_bytes_per_token / 1024, 1),
                    "overhead": round(est.overhead / GiB, 2), "total_min": round(est.total / GiB, 2),
                    "concurrent_full_length_sequences": max(0, int((budget * GiB - est.weights - est.overhead)
                                                                   // max(1, est.kv_one_sequence)))}
        if est.total / GiB > budget:
            warnings.append(
                f"generate: the teacher needs ~{est.total / GiB:.1f} GiB per GPU for one full-length sequence, "
                f"over {budget:.1f} GiB ({g.teacher.vllm.gpu_memory_utilization:g} of {gpu_gib:g}); raise "
                "generate.teacher.vllm.tensor_parallel_size or lower max_model_len")
    return Plan(gpu_gib, cfg.hardware.num_gpus, train, generate, warnings)


def warn_if_too_big(cfg: RecipeConfig, stage: str) -> None:
    """Before a stage starts on a GPU: log a warning when the plan says it will not fit that GPU."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(0).total_memory / GiB
    cfg = cfg.model_copy(deep=True)
    cfg.hardware.gpu_memory_gib = total
    try:
        plan = plan_recipe(cfg)
    except DistillkitError:
        return  # unknown shape: nothing to say
    for w in plan.warnings:
        if w.startswith(stage):
            log.warning("memory plan: %s", w)
