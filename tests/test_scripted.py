"""The scripted teacher (distillkit.testing.scripted): after any prompt ending in the chain's first token
it writes the rest of the chain, greedy or sampled at T=0.6 / top-p 0.95, on a tiny or a 152k vocabulary."""

from __future__ import annotations

import json
import math

import pytest

from distillkit.testing.scripted import build_scripted_model, chain_for

# The tiny BPE splits words into pieces, so few sentences have distinct tokens; this one does.
COMPLETION = "Two plus three makes five.</think>Answer: \\boxed{5}"
PROMPT_TAIL = "<think>\n"
QUESTIONS = ["What is 2 + 3? Put the final answer within \\boxed{}.",
             "Tom has two apples and buys three more. How many?"]
REAL_VOCAB = 152064  # DeepSeek-R1-Distill-Qwen / Qwen2.5's padded vocabulary


@pytest.fixture(scope="module")
def tok_dir(tiny_qwen2):
    """The session's tiny tokenizer (build_tiny_tokenizer's, in tiny_qwen2's folder): only its tokenizer
    files are copied into scripted models, never its weights or config."""
    return tiny_qwen2


@pytest.fixture(scope="module")
def tok(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def chain(tok):
    return chain_for(tok, PROMPT_TAIL, COMPLETION, tok.eos_token_id)


def prompt_ids(tok, question: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                   add_generation_prompt=True) + PROMPT_TAIL
    return tok.encode(text, add_special_tokens=False)


def top1_probs(logits) -> list[float]:
    """Top-1 probability per step, 1 / sum(exp(logit - max)) in float64 (float32 rounds 1 - 1e-12 to 1, and
    torch's float64 softmax was off by 25% in 1 - p here)."""
    lg = logits.double()
    return (1 / (lg - lg.max(-1, keepdim=True).values).exp().sum(-1)).tolist()


def test_chain_for_and_its_errors(tok, chain):
    assert chain[0] == tok.encode("\n", add_special_tokens=False)[-1] and chain[-1] == tok.eos_token_id
    assert tok.decode(chain[1:-1]) == COMPLETION and len(set(chain)) == len(chain)
    with pytest.raises(ValueError, match=r"repeated: 55 'T' at positions \[1, 16\]"):
        chain_for(tok, PROMPT_TAIL, "Two plus three makes five.</think>The answer is \\boxed{5}", tok.eos_token_id)
    with pytest.raises(ValueError, match="'5'"):  # a digit in both the reasoning and the box
        chain_for(tok, PROMPT_TAIL, "Two plus three equals 5.</think>\\boxed{5}", tok.eos_token_id)
    with pytest.raises(ValueError, match="'\\\\n'"):  # the prompt's last token again in the completion
        chain_for(tok, PROMPT_TAIL, "Two\n</think>", tok.eos_token_id)


def test_build_refuses_bad_chains_and_overrides(tok_dir, chain, tmp_path):
    with pytest.raises(ValueError, match="distinct; repeated: 7 at positions"):
        build_scripted_model(tmp_path, tok_dir, [5, 7, 9, 7, 2])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        build_scripted_model(tmp_path, tok_dir, [5, 7, 600], vocab_size=512)
    with pytest.raises(ValueError, match="may not set"):
        build_scripted_model(tmp_path, tok_dir, chain, config_overrides={"intermediate_size": 256})
    with pytest.raises(ValueError, match="multiple of 64"):
        build_scripted_model(tmp_path, tok_dir, chain, config_overrides={"hidden_size": 96})
    with pytest.raises(ValueError, match=r"one of \['llama', 'qwen2', 'qwen3'\]"):
        build_scripted_model(tmp_path, tok_dir, chain, arch="gpt2")


def check_writes_chain(model_dir, chain, questions=QUESTIONS, sampled: int = 2) -> float:
    """Greedy (and sampled) transformers generation reproduces the chain after prompts ending in chain[0];
    returns the smallest top-1 probability seen (raw logits, T=1)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)  # the copy inside the model folder
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert tok.decode(chain[1:-1]) == COMPLETION
    worst = 1.0
    for q in questions:
        ids = prompt_ids(tok, q)
        assert ids[-1] == chain[0]
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=len(chain) + 8,
                             output_logits=True, return_dict_in_generate=True)
        assert out.sequences[0, len(ids):].tolist() == chain[1:]  # stopped at the EOS, nothing after it
        probs = top1_probs(torch.cat(out.logits))
        assert min(probs) > 0.999, probs
        worst = min(worst, *probs)
        for seed in range(sampled):
            torch.manual_seed(seed)
            s = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=0.6, top_p=0.95,
                               top_k=0, max_new_tokens=len(chain) + 8)
            assert s[0, len(ids):].tolist() == chain[1:]
    return worst


@pytest.mark.parametrize("vocab_size", [None, REAL_VOCAB], ids=["tiny_vocab", "vocab_152064"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_greedy_and_sampled_generation_write_the_chain(tok_dir, chain, tmp_path, arch, tied, vocab_size):
    from safetensors import safe_open

    out = build_scripted_model(tmp_path / "m", tok_dir, chain, arch=arch, vocab_size=vocab_size,
                               config_overrides={"tie_word_embeddings": tied, "max_position_embeddings": 131072,
                                                 "rope_theta": 10000.0})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["vocab_size"] == (vocab_size or 512) and cfg["hidden_size"] == 64
    assert cfg["tie_word_embeddings"] is tied and cfg["max_position_embeddings"] == 131072
    assert (out / "tokenizer.json").exists() and (out / "chat_template.jinja").exists()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == chain[-1]
    with safe_open(out / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in f.keys()) is (not tied)
    # Sampling with transformers over 152k tokens costs ~0.1 s a step (top-p sorts the vocabulary): the big
    # vocabulary is sampled by vLLM in the slow test; here its top-1 probability shows what top-p would keep.
    worst = check_writes_chain(out, chain, sampled=0 if vocab_size else 2)
    print(f"\n{arch} tied={tied} vocab={cfg['vocab_size']}: min top-1 prob {worst:.15f} (1 - p = {1 - worst:.2e})")


def test_margin_sets_the_logit_gap_and_bf16_weights_work(tok_dir, chain, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = build_scripted_model(tmp_path / "m", tok_dir, chain, vocab_size=REAL_VOCAB, margin=20.0, dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([chain[:-1]])).logits[0]
    top2 = logits.topk(2, dim=-1).values
    assert logits.argmax(-1).tolist() == chain[1:]
    gap = (top2[:, 0] - top2[:, 1])
    assert gap.min() > 19.5 and gap.max() < 20.5, gap  # bf16 weights: ~0.4% off
    # ln(V) + ln(999) ~ 18.8: a margin of 20 still leaves the top token above 0.999 at T=1
    assert min(top1_probs(logits)) > 0.999 and 20 > math.log(REAL_VOCAB * 999)


def test_chains_longer_than_64_use_more_heads(tok_dir, tmp_path):
    chain = list(range(10, 110)) + [2]  # 101 distinct ids: hidden 128, 2 heads
    out = build_scripted_model(tmp_path / "m", tok_dir, chain)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 128 and cfg["num_attention_heads"] == 2
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.tensor([[400, 300, 10]])  # any prompt ending in chain[0]
    seq = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=120)
    assert seq[0, 3:].tolist() == chain[1:]


# --- vLLM on CPU: one engine for the module ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_engine(tok_dir, chain, tmp_path_factory):
    pytest.importorskip("vllm")
    from distillkit.engines.vllm_cpu import (
        cpu_engine_in_process, cpu_engine_kwargs, is_cpu_platform, prepare_cpu_env, shutdown_engine)

    # untied, 152k vocabulary, real context: shaped like DeepSeek-R1-Distill-Qwen's head
    model_dir = build_scripted_model(tmp_path_factory.mktemp("scripted_vllm"), tok_dir, chain, arch="qwen2",
                                     vocab_size=REAL_VOCAB,
                                     config_overrides={"tie_word_embeddings": False, "max_position_embeddings": 131072})
    from vllm import LLM

    kwargs = dict(model=str(model_dir), dtype="auto", max_model_len=512, enforce_eager=True, max_logprobs=20, seed=0)
    if is_cpu_platform():
        prepare_cpu_env()
        cpu_engine_kwargs(kwargs, user={})
        with cpu_engine_in_process(kwargs):
            llm = LLM(**kwargs)
    else:
        llm = LLM(**kwargs)
    yield llm
    shutdown_engine(llm)


@pytest.mark.slow
def test_vllm_samples_are_the_chain(vllm_engine, tok, chain):
    from vllm import SamplingParams

    params = SamplingParams(n=4, temperature=0.6, top_p=0.95, max_tokens=64, logprobs=5)
    prompts = [{"prompt_token_ids": prompt_ids(tok, q)} for q in QUESTIONS]
    assert all(p["prompt_token_ids"][-1] == chain[0] for p in prompts)
    assert prompts[0]["prompt_token_ids"] != prompts[1]["prompt_token_ids"]
    outputs = vllm_engine.generate(prompts, params, use_tqdm=False)
    worst = 0.0
    for out in outputs:
        assert len(out.outputs) == 4
        for comp in out.outputs:
            assert list(comp.token_ids) == chain[1:] and comp.finish_reason == "stop"
            assert comp.text == COMPLETION  # the EOS is not part of the text
            for step, want in zip(comp.logprobs, chain[1:]):
                assert step[want].rank == 1 and len(step) == 5
                # the runners-up (soft labels) sit ~margin (40) below
                assert all(lp.logprob < -39 for t, lp in step.items() if t != want)
                worst = min(worst, step[want].logprob)  # raw logprob (T=1) of the scripted token
    assert worst > math.log(0.999)
    print(f"\nvLLM: smallest raw logprob of a scripted token {worst:.3e} (top-1 prob {math.exp(worst):.15f})")
