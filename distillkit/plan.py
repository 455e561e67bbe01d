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

soft labels (bytes per generated token, the recipe's format; `soft_label_plan`)
  on disk      before Parquet's zstd, exact given the rows (tests/test_plan_labels.py checks real encoded batches):
               packed-v1 top-k: 2 + (k - own) * id_bits / 8 + (k - 1)   (rank + tail bytes, ids, k - 1 gap codes)
               sampled-v1, N draws of m distinct ids: 3 + (m - own) * id_bits / 8 + (m - 1)
                                                    (three row bytes, ids, a count for all but the last)
               fp16 top-k: 6k (int32 id + fp16 logprob)
               `own` is the share of rows holding the trace's own token (its id is referenced, not stored; planned as 1).
               m is planned from SmolLM2-135M traces at T = 1 (`SAMPLED_DISTINCT_MEASURED`), and at worst N. zstd
               takes ~0.68x off sampled-v1 (12.9 of 19.1 bytes at N = 32), ~0.6x off packed-v1, ~0.5x off fp16.
  cache        the training examples (examples.arrow): 9 + 8k (int32 ids and fp32 logprobs of fixed width), sampled
               rows cut to their m ids: 9 + 8 + 8m (two int32 offsets per token)
  batch        the collator's label tensors on the GPU: tokens * (12 * width + 1) (int64 ids, fp32 logprobs, mask),
               width the rows' (at most N for sampled ones); counted in training's `labels`

Checked against published figures in tests/test_plan.py (Unsloth's Hugging Face + FA2 QLoRA
context limits for Llama-3.1-8B; the 128 KiB/token KV cache of Llama-3-8B).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
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
    labels: float = 0.0  # the batch's soft-label tensors

    @property
    def total(self) -> float:
        return self.weights + self.trainable_states + self.activations + self.logits + self.labels + self.overhead


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
                      shard_over: int = 1, label_width: int = 0) -> TrainEstimate:
    """Peak bytes of one training step on one GPU (see the module docstring for each term); `label_width`: the
    width of the stored soft-label rows the batches carry (0 without)."""
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
    labels = label_batch_bytes(tokens, label_width)
    overhead = 1 * GiB + 0.08 * (weights + states + activations + logits + labels)
    return TrainEstimate(weights, states, activations, logits, overhead, trainable, shape.params, labels)


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


# ----------------------------------------------------------------------------------------- soft labels

SAMPLED_DISTINCT_MEASURED = {8: 2.95, 16: 4.28, 32: 6.35, 64: 9.43}
"""Mean distinct ids per position of N draws: SmolLM2-135M traces (arithmetic, 5,550 tokens) drawn at T = 1
(BENCHMARKS.md, "Sampled soft labels"). A broader teacher (a higher temperature, open-ended text) draws more."""


def sampled_distinct_per_token(num_samples: int) -> float:
    """Planned mean distinct ids per position for N draws: `SAMPLED_DISTINCT_MEASURED` interpolated in log-log (a
    power law between its points, the end segments' slope beyond them), between 1 and N."""
    ns = sorted(SAMPLED_DISTINCT_MEASURED)
    xs, ys = [math.log(n) for n in ns], [math.log(SAMPLED_DISTINCT_MEASURED[n]) for n in ns]
    x = math.log(max(1, num_samples))
    i = min(max(bisect.bisect_left(xs, x) - 1, 0), len(xs) - 2)
    y = ys[i] + (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) * (x - xs[i])
    return min(max(math.exp(y), 1.0), float(num_samples))


def sampled_bytes_per_token(id_bits: int, distinct: float, own: float = 1.0) -> float:
    """sampled-v1 bytes per position before compression: num_distinct, token_rank and token_logprob (a byte each),
    each distinct id but the trace's own token (`own`: the share of rows where it was drawn) at `id_bits`, and a count
    byte for each distinct id but the row's last (N minus the others)."""
    return 3 + (distinct - own) * id_bits / 8 + max(0.0, distinct - 1)


def packed_bytes_per_token(k: int, id_bits: int, own: float = 1.0) -> float:
    """packed-v1 bytes per position before compression: the sampled token's rank and the tail (a byte each), the k ids
    but the sampled token's (`own`: the share of rows holding it) at `id_bits`, and k - 1 gap codes."""
    return 2 + (k - own) * id_bits / 8 + (k - 1)


def label_cache_bytes_per_token(width: int, distinct: float | None = None) -> float:
    """The training cache (examples.arrow) per token: int32 input_ids and labels, an int8 kd_mask, and the rows: fixed
    width (top-k: int32 id + fp32 logprob per slot) or, for sampled labels (`distinct` given), cut to their distinct ids
    (the same 8 bytes each plus two int32 row offsets)."""
    if distinct is None:
        return 9 + 8 * width
    return 9 + 8 + 8 * distinct


def label_batch_bytes(tokens: int, width: int) -> float:
    """The collator's label tensors for `tokens` positions of rows `width` wide: int64 ids, fp32 logprobs, bool mask."""
    return tokens * (12 * width + 1) if width else 0.0


def soft_label_plan(label_format: str, width: int, vocab: int) -> dict:
    """Bytes per token of a run's soft labels (see the module docstring): {format, width, id_bits, distinct_per_token
    (sampled), disk_bytes_per_token (before zstd), disk_bytes_per_token_worst (sampled: every draw distinct),
    cache_bytes_per_token}."""
    id_bits = max(1, (vocab - 1).bit_length())
    plan = {"format": label_format, "width": width, "id_bits": id_bits}
    if label_format == "sampled-v1":
        m = sampled_distinct_per_token(width)
        plan.update(distinct_per_token=round(m, 2), disk_bytes_per_token=round(sampled_bytes_per_token(id_bits, m), 1),
                    disk_bytes_per_token_worst=round(sampled_bytes_per_token(id_bits, width, own=0.0), 1),
                    cache_bytes_per_token=round(label_cache_bytes_per_token(width, m), 1))
    elif label_format == "packed-v1":
        plan.update(disk_bytes_per_token=round(packed_bytes_per_token(width, id_bits), 1),
                    cache_bytes_per_token=label_cache_bytes_per_token(width))
    else:
        plan.update(disk_bytes_per_token=6 * width, cache_bytes_per_token=label_cache_bytes_per_token(width))
    return plan


def recipe_soft_labels(cfg: RecipeConfig) -> dict | None:
    """`soft_label_plan` of the labels the recipe writes (score's when it scores, else generate's), None without."""
    if "score" in cfg.stages:
        fmt, width, teacher = cfg.score.label_format, cfg.score.label_width, cfg.score.teacher.model
    elif "generate" in cfg.stages and cfg.generate.label_format:
        fmt, width, teacher = cfg.generate.label_format, cfg.generate.label_width, cfg.generate.teacher.model
    else:
        return None
    try:
        vocab = model_shape(teacher).vocab
    except DistillkitError:
        vocab = 152064  # a teacher of unknown shape: R1's vocabulary (18-bit ids), the larger common case
    return soft_label_plan(fmt, width, vocab)


@dataclass
class Plan:
    gpu_memory_gib: float
    num_gpus: int
    train: dict | None
    generate: dict | None
    warnings: list[str]
    soft_labels: dict | None = None
    generate_teachers: dict | None = None
    """With `generate.teachers`: each vLLM teacher's `generate` numbers by name (`generate` is the largest: they run
    one engine at a time)."""


def plan_recipe(cfg: RecipeConfig) -> Plan:
    """Estimate both stages of a recipe against its hardware section; warnings say what will not fit."""
    gpu_gib = cfg.hardware.gpu_memory_gib
    warnings: list[str] = []
    train = generate = None
    t = cfg.train
    labels = recipe_soft_labels(cfg)
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
            kd_chunk=t.kd.chunk_size if t.kd.enabled else None, shard_over=shard if sharded else 1,
            label_width=labels["width"] if labels and t.kd.enabled and t.kd.teacher_probs.startswith(("topk", "sampled"))
            else 0)
        train = {k: round(v / GiB, 2) for k, v in {
            "weights": est.weights, "trainable_states": est.trainable_states, "activations": est.activations,
            "logits": est.logits, "labels": est.labels, "overhead": est.overhead, "total": est.total}.items()}
        train["trainable_params_m"] = round(est.trainable_params / 1e6, 1)
        train["total_params_b"] = round(est.total_params / 1e9, 2)
        if est.total / GiB > gpu_gib:
            warnings.append(
                f"train: ~{est.total / GiB:.1f} GiB per GPU exceeds {gpu_gib:g} GiB; lower train.max_length "
                f"or per_device_train_batch_size, enable gradient_checkpointing or kd (chunked loss), "
                f"use method: qlora, or shard with an FSDP/ZeRO-3 accelerate config")
    per_teacher = None
    if "generate" in cfg.stages and cfg.generate.teachers:
        per_teacher = {}
        for t in cfg.generate.teachers:
            numbers = _plan_generate(cfg.generate.for_teacher(t.name), gpu_gib, warnings, f"teacher {t.name}",
                                     f"generate.teachers[{t.name}]")
            if numbers is not None:
                per_teacher[t.name] = numbers
        generate = max(per_teacher.values(), key=lambda n: n["total_min"], default=None)
    elif "generate" in cfg.stages:
        generate = _plan_generate(cfg.generate, gpu_gib, warnings)
    return Plan(gpu_gib, cfg.hardware.num_gpus, train, generate, warnings, labels, per_teacher)


def _plan_generate(g, gpu_gib: float, warnings: list[str], subject: str = "the teacher",
                   key: str = "generate.teacher") -> dict | None:
    """The generate numbers of one teacher's engine (`g`: its single-teacher section; None when it is no vLLM engine);
    a warning naming `subject` and `key` when one full-length sequence does not fit."""
    if not load_backend(g.teacher.backend).uses_vllm_engine:
        return None
    shape = model_shape(g.teacher.model)
    seq = g.teacher.vllm.max_model_len or g.sampling.max_tokens + 1024  # + room for the prompt
    est = estimate_generation(shape, seq, g.teacher.vllm.tensor_parallel_size)
    budget = gpu_gib * g.teacher.vllm.gpu_memory_utilization
    if est.total / GiB > budget:
        warnings.append(
            f"generate: {subject} needs ~{est.total / GiB:.1f} GiB per GPU for one full-length sequence, "
            f"over {budget:.1f} GiB ({g.teacher.vllm.gpu_memory_utilization:g} of {gpu_gib:g}); raise "
            f"{key}.vllm.tensor_parallel_size or lower max_model_len")
    return {"weights": round(est.weights / GiB, 2), "kv_one_sequence": round(est.kv_one_sequence / GiB, 2),
            "kv_kib_per_token": round(est.kv_bytes_per_token / 1024, 1),
            "overhead": round(est.overhead / GiB, 2), "total_min": round(est.total / GiB, 2),
            "concurrent_full_length_sequences": max(0, int((budget * GiB - est.weights - est.overhead)
                                                           // max(1, est.kv_one_sequence)))}


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
