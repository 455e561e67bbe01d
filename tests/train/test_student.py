"""Student initialization: kept layers, tokenizer fix-ups, LoRA/QLoRA loading."""

from __future__ import annotations

import pytest


def test_parse_keep_layers():
    from distillkit.errors import DistillkitError
    from distillkit.student.build import parse_keep_layers

    assert parse_keep_layers("every_other", 6) == [0, 2, 4, 5]  # the last layer always stays
    assert parse_keep_layers("every_other", 5) == [0, 2, 4]
    assert parse_keep_layers("first:3", 30) == [0, 1, 2]
    assert parse_keep_layers("last:2", 5) == [3, 4]
    assert parse_keep_layers([4, 0, 4], 6) == [0, 4]
    assert parse_keep_layers(None, 3) == [0, 1, 2]
    for bad in ("first:0", "first:31", "half", [30], []):
        with pytest.raises(DistillkitError, match="keep_layers"):
            parse_keep_layers(bad, 30)


def test_pruned_student_copies_kept_layers_and_generates(tmp_path, tiny_qwen2):
    import torch
    from transformers import AutoModelForCausalLM

    from distillkit.student.build import build_student_init, prune_layers
    from distillkit.testing import build_tiny_model

    src = build_tiny_model(tmp_path / "four", num_layers=4, tokenizer_dir=tiny_qwen2)
    cfg = type("S", (), {"model": str(src), "keep_layers": "every_other"})()
    info = build_student_init(cfg, tmp_path / "init", dtype="float32")
    assert info["kept_layers"] == [0, 2, 3] and info["num_layers"] == 4
    full = AutoModelForCausalLM.from_pretrained(src)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "init")
    assert pruned.config.num_hidden_layers == 3 and len(pruned.config.layer_types) == 3
    for new, old in enumerate([0, 2, 3]):
        assert torch.equal(pruned.model.layers[new].mlp.up_proj.weight, full.model.layers[old].mlp.up_proj.weight)
        assert pruned.model.layers[new].self_attn.layer_idx == new  # KV-cache slots renumbered
    # The pruned model equals running the kept layers of the full one.
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        full.model.layers = torch.nn.ModuleList([full.model.layers[i] for i in (0, 2, 3)])
        full.config.num_hidden_layers = 3
        full.config.layer_types = full.config.layer_types[:3]
        for new, layer in enumerate(full.model.layers):
            layer.self_attn.layer_idx = new
        assert torch.allclose(pruned(ids).logits, full(ids).logits, atol=1e-5)
        out = pruned.generate(ids, max_new_tokens=4, do_sample=False)
        # in memory, before any save: usable as is (rotary buffers included)
        direct = prune_layers(AutoModelForCausalLM.from_pretrained(src), [0, 2, 3])
        assert not any(b.is_meta for b in direct.buffers())
        assert torch.allclose(direct(ids).logits, pruned(ids).logits, atol=1e-5)
    assert out.shape == (1, 9)


def test_fix_tokenizer_separates_pad_from_eos_and_adds_markers(tiny_qwen2):
    from transformers import AutoTokenizer

    from distillkit.student.build import fix_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    tok.pad_token = tok.eos_token  # SmolLM2 ships like this
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    changes = fix_tokenizer(tok)
    assert tok.pad_token_id != tok.eos_token_id and tok.pad_token == "<|pad|>"
    assert "{% generation %}" in tok.chat_template and len(changes) == 2
    assert fix_tokenizer(tok) == []  # idempotent


def test_qlora_student_is_nf4_double_quant_with_lora_on_top(tmp_path, tiny_qwen2):
    import bitsandbytes as bnb

    from distillkit.config import TrainConfig
    from distillkit.student.build import load_student

    cfg = TrainConfig(method="qlora", lora={"r": 4}, gradient_checkpointing=False)
    model, _ = load_student(cfg, tiny_qwen2)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    state = four_bit[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested = double quantization
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_whole_student_links_its_weights_instead_of_loading_them(tmp_path, tiny_qwen2, monkeypatch):
    """Every layer kept and nothing to resize: student_init links the safetensors files (no copy, no load)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.student import build as student_mod
    from distillkit.testing import build_tiny_model

    src = build_tiny_model(tmp_path / "src", num_layers=2, tokenizer_dir=tiny_qwen2)
    tok = AutoTokenizer.from_pretrained(src)
    tok.pad_token = tok.eos_token  # SmolLM2-like: the train stage must pick a distinct pad
    tok.save_pretrained(src)
    cfg = type("S", (), {"model": str(src), "keep_layers": None})()
    info = student_mod.build_student_init(cfg, tmp_path / "init")
    assert info["weights"] == "linked" and info["kept_layers"] == [0, 1]
    assert (tmp_path / "init" / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
    source_model = AutoModelForCausalLM.from_pretrained(src)
    assert info["num_params"] == sum(p.numel() for p in source_model.parameters())
    init_tok = AutoTokenizer.from_pretrained(tmp_path / "init")
    assert init_tok.pad_token == "<|pad|>" and any("pad_token" in c for c in info["tokenizer_changes"])
    init = AutoModelForCausalLM.from_pretrained(tmp_path / "init")
    assert init.config.pad_token_id == init.generation_config.pad_token_id == init_tok.pad_token_id
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        assert torch.equal(init(ids).logits, source_model(ids).logits)

    # Sharded weights (an index) beside a stray .safetensors file: the index's shards are linked, counted once.
    sharded = tmp_path / "sharded"
    source_model.save_pretrained(sharded, max_shard_size="100KB")
    tok.save_pretrained(sharded)
    (sharded / "consolidated.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    info = student_mod.build_student_init(type("S", (), {"model": str(sharded), "keep_layers": None})(),
                                          tmp_path / "i_sharded")
    assert info["weights"] == "linked" and info["num_params"] == sum(p.numel() for p in source_model.parameters())
    assert sorted(p.name for p in (tmp_path / "i_sharded").glob("*.safetensors")) == shards
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "i_sharded")(ids).logits,
                           source_model(ids).logits)

    # A fix that adds a token past the embedding rows, .bin weights, or pruning: weights are loaded and written.
    def adds_a_token(tokenizer, model=None):
        tokenizer.add_special_tokens({"pad_token": "<|brand_new_pad|>"})
        if model is not None:
            model.resize_token_embeddings(len(tokenizer))
        return ["pad_token: '<|brand_new_pad|>'"]

    exact = build_tiny_model(tmp_path / "exact", num_layers=2, tokenizer_dir=tiny_qwen2, vocab_size=len(tok))
    monkeypatch.setattr(student_mod, "fix_tokenizer", adds_a_token)
    info = student_mod.build_student_init(type("S", (), {"model": str(exact), "keep_layers": None})(), tmp_path / "i2")
    assert info["weights"] == "written" and info["tokenizer_changes"] == ["pad_token: '<|brand_new_pad|>'"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "i2").config.vocab_size == len(tok) + 1
    monkeypatch.undo()
    (tmp_path / "bin").mkdir()
    for name in ("config.json", "generation_config.json"):
        (tmp_path / "bin" / name).write_bytes((src / name).read_bytes())
    torch.save(source_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # an older checkpoint format
    tok.save_pretrained(tmp_path / "bin")
    info = student_mod.build_student_init(type("S", (), {"model": str(tmp_path / "bin"), "keep_layers": None})(),
                                          tmp_path / "i3")
    assert info["weights"] == "written"


@pytest.mark.parametrize("cuda,cuda_bf16,cpu_bf16,expected", [
    (True, True, False, True), (True, False, True, False),  # a GPU decides by itself
    (False, False, True, True), (False, False, False, False),  # a CPU: bf16 only where it is native
])
def test_bf16_null_follows_the_hardware(monkeypatch, cuda, cuda_bf16, cpu_bf16, expected):
    import torch

    from distillkit import hardware
    from distillkit.student.build import resolve_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: cpu_bf16)
    assert resolve_bf16(None) is expected
    assert resolve_bf16(False) is False and resolve_bf16(True) is True  # an explicit setting wins


@pytest.mark.parametrize("bf16", [True, False])
def test_lora_base_is_bf16_when_training_in_bf16(tiny_qwen2, bf16):
    """The frozen base follows train.bf16 (half the memory of an fp32 base); adapters stay fp32."""
    import torch

    from distillkit.config import RecipeConfig
    from distillkit.student.build import load_student

    cfg = RecipeConfig.model_validate({"train": {"method": "lora", "bf16": bf16, "lora": {"r": 4}}})
    model, _ = load_student(cfg.train, tiny_qwen2)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16 if bf16 else torch.float32} and trained == {torch.float32}
