"""The memory planner against published figures, and its warnings."""

import pytest

from distillkit.config import load_recipe
from distillkit.plan import GiB, KNOWN_SHAPES, estimate_training, kv_bytes_per_token, model_shape, plan_recipe

LLAMA_8B = KNOWN_SHAPES["meta-llama/llama-3.1-8b"]


@pytest.mark.parametrize("name,billions", [
    ("meta-llama/llama-3.1-8b", 8.03), ("qwen/qwen2.5-math-7b", 7.62), ("qwen/qwen2.5-14b", 14.77),
    ("qwen/qwen2.5-32b", 32.76), ("meta-llama/llama-3.3-70b-instruct", 70.55), ("qwen/qwen2.5-math-1.5b", 1.54),
    # Qwen3 cards: 0.6B (0.44B without embeddings), 1.7B (1.4B), 4.0B (3.6B), 8.2B (6.95B), 32.8B (31.2B);
    # Meta's Llama 3.2 cards: 1.23B, 3.21B
    ("qwen/qwen3-0.6b", 0.60), ("qwen/qwen3-1.7b", 1.72), ("qwen/qwen3-4b", 4.02), ("qwen/qwen3-8b", 8.19),
    ("qwen/qwen3-32b", 32.76), ("meta-llama/llama-3.2-1b", 1.24), ("meta-llama/llama-3.2-3b", 3.21),
])
def test_parameter_counts_match_model_cards(name, billions):
    assert KNOWN_SHAPES[name].params / 1e9 == pytest.approx(billions, abs=0.02)


# Unsloth's table (Llama 3.1 8B, 4-bit QLoRA on all linear layers, rank 32, batch 1, padded to a
# fixed length): the longest context that fits with Hugging Face + FA2 on 24 / 40 / 80 GB.
@pytest.mark.parametrize("gpu_gb,max_context", [(24, 5789), (40, 12264), (80, 28454)])
def test_qlora_8b_matches_published_context_limits(gpu_gb, max_context):
    est = estimate_training(LLAMA_8B, "qlora", seq_len=max_context, lora_r=32)
    # Card sizes ("24 GB") are GiB of device memory (an RTX 4090 has 24,564 MiB).
    assert est.total / GiB == pytest.approx(gpu_gb, rel=0.10)


def test_kv_cache_per_token_llama3_8b_is_128_kib():
    assert kv_bytes_per_token(LLAMA_8B) == 128 * 1024
    assert kv_bytes_per_token(KNOWN_SHAPES["qwen/qwen2.5-math-7b"]) == 56 * 1024


def test_chunked_kd_and_checkpointing_shrink_the_estimate():
    plain = estimate_training(LLAMA_8B, "qlora", seq_len=16384, gradient_checkpointing=True)
    chunked = estimate_training(LLAMA_8B, "qlora", seq_len=16384, gradient_checkpointing=True, kd_chunk=1024)
    no_ckpt = estimate_training(LLAMA_8B, "qlora", seq_len=16384, gradient_checkpointing=False)
    assert chunked.logits == plain.logits / 16
    assert no_ckpt.activations > 5 * plain.activations
    assert chunked.total / GiB < 24 < plain.total / GiB


def test_full_finetune_states_and_sharding():
    full = estimate_training(LLAMA_8B, "full", seq_len=2048)
    assert full.weights + full.trainable_states == pytest.approx(LLAMA_8B.params * 16)
    sharded = estimate_training(LLAMA_8B, "full", seq_len=2048, shard_over=8)
    assert sharded.trainable_states == pytest.approx(full.trainable_states / 8)


def test_plan_warns_for_full_8b_on_24gb_and_names_fixes():
    cfg = load_recipe(None, ["train.student.model=meta-llama/Llama-3.1-8B", "train.method=full",
                             "generate.teacher.model=deepseek-ai/DeepSeek-R1-Distill-Llama-70B"])
    plan = plan_recipe(cfg)
    assert any(w.startswith("train:") and "method: qlora" in w for w in plan.warnings)
    assert any(w.startswith("generate:") and "tensor_parallel_size" in w for w in plan.warnings)
    cfg.generate.teacher.vllm.tensor_parallel_size = 8
    cfg.hardware.gpu_memory_gib = 80
    assert not any(w.startswith("generate:") for w in plan_recipe(cfg).warnings)


def test_plan_reads_local_config_and_rejects_unknown(tmp_path):
    (tmp_path / "config.json").write_text('{"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,'
                                          ' "intermediate_size": 256, "vocab_size": 512, "tie_word_embeddings": true}')
    assert model_shape(str(tmp_path)).params == 512 * 128 + 2 * (4 * 128 * 128 + 3 * 128 * 256 + 256)
    from distillkit.errors import DistillkitError

    with pytest.raises(DistillkitError, match="does not know the shape"):
        model_shape("someone/unknown-model")


@pytest.mark.parametrize("spec,expected", [(None, 28), ([0, 5, 27], 3), ("every_other", 14), ("first:20", 20),
                                           ("last:8", 8), ("auto:24", 24), ("auto:99", 28)])
def test_layers_kept_for_every_keep_layers_form(spec, expected):
    from distillkit.plan import KNOWN_SHAPES, _layers_kept

    shape = next(s for s in KNOWN_SHAPES.values() if s.layers == 28)
    assert _layers_kept(shape, spec) == expected
