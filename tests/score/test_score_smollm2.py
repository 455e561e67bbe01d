"""Scoring on the real SmolLM2-135M-Instruct with vLLM: the soft labels `score` writes for traces that
generate sampled with top-20 are the ones generate captured, in-process and through a vLLM server; and
on-policy training against that server."""

from __future__ import annotations

import numpy as np
import pytest

from distillkit.config import validate_recipe
from distillkit.records import read_records

pytestmark = pytest.mark.slow
pytest.importorskip("vllm")

K = 20
# Pinned fp32: the test compares decode-time and prefill-time logprobs, which agree to one fp16 step only when
# both run in fp32. In the config's bf16 (what vLLM picks on an AVX512-BF16 CPU) they agree on ~96% of the top-20
# ids, which would hide the position shift this test is here to catch.
VLLM = {"max_model_len": 1024, "enforce_eager": True, "dtype": "float32"}


def make_cfg(model, out, **score):
    return validate_recipe({
        "name": "t", "output_dir": str(out), "stages": ["generate", "score"],
        "generate": {"teacher": {"model": str(model), "vllm": VLLM},
                     "prompts": {"builtin": "arith", "builtin_args": {"num": 3}},
                     "sampling": {"n": 2, "max_tokens": 48, "topk_logprobs": K, "seed": 0}, "shard_size": 2,
                     "soft_label_format": "fp16"},  # both compared to one fp16 step: unquantized
        "score": {"teacher": {"model": str(model), "vllm": VLLM},
                  "topk": K, "shard_size": 4, "soft_label_format": "fp16", **score}})


@pytest.fixture(scope="module")
def generated(smollm2_dir, tmp_path_factory):
    """Traces generated with top-20, and the scorer on the very engine that generated them."""
    from distillkit.engines.scorers import VllmScorer
    from distillkit.engines.vllm import VllmBackend
    from distillkit.generate.stage import run_generate

    cfg = make_cfg(smollm2_dir, tmp_path_factory.mktemp("run"))
    backend = VllmBackend.from_config(cfg.generate)
    run_generate(cfg, backend=backend)
    yield cfg, VllmScorer(backend.llm, backend.llm.llm_engine.model_config.max_model_len)
    backend.close()


def assert_same_labels(generated_rows, scored_rows):
    """Same ids at every rank and logprobs within one float16 step (both are stored as float16)."""
    gen = {r["id"]: r for r in generated_rows}
    scored = {r["id"]: r for r in scored_rows}
    assert gen.keys() == scored.keys()
    positions = 0
    for rid, g in gen.items():
        s = scored[rid]
        assert s["completion_ids"] == g["completion_ids"]
        g_ids, s_ids = np.asarray(g["topk_ids"]), np.asarray(s["topk_ids"])
        g_lp = np.asarray(g["topk_logprobs"], dtype=np.float16)
        s_lp = np.asarray(s["topk_logprobs"], dtype=np.float16)
        assert (g_ids == s_ids).mean() >= 0.995  # a near-tie may swap two neighbours
        same = g_ids == s_ids
        step = np.spacing(np.abs(g_lp[same])).astype(np.float32)
        assert np.all(np.abs(g_lp[same].astype(np.float32) - s_lp[same].astype(np.float32)) <= step + 1e-6)
        positions += len(g_ids)
    return positions


def test_scored_labels_are_the_ones_generate_captured(generated):
    from distillkit.score.stage import run_score

    cfg, scorer = generated
    m = run_score(cfg, scorer=scorer)
    assert m.counts["records"] == 6 and m.counts["skipped"] == 0 and m.stats["retokenized"] == 0
    positions = assert_same_labels(read_records(cfg.stage_dir("generate")).to_list(),
                                   read_records(cfg.stage_dir("score")).to_list())
    assert positions == m.counts["tokens"] > 100


@pytest.fixture(scope="module")
def server(smollm2_dir):
    """One vLLM server over the real SmolLM2 for this module (as `openai.serve: true` starts it)."""
    from distillkit.evaluate.harness import vllm_server

    with vllm_server(str(smollm2_dir), seed=0, extra_args=["--max-logprobs", str(K), "--max-model-len", "1024",
                                                                "--dtype", "float32"]) as url:
        yield url


def test_a_vllm_server_scores_the_same(generated, server, tmp_path):
    """`teacher.backend: openai`: scoring through a vLLM server gives the labels generate captured."""
    from distillkit.score.stage import run_score

    cfg, _ = generated
    served = make_cfg(cfg.generate.teacher.model, tmp_path, input=str(cfg.stage_dir("generate")),
                      teacher={"model": cfg.generate.teacher.model, "backend": "openai",
                               "openai": {"base_url": server + "/v1", "model": str(cfg.generate.teacher.model),
                                          "max_concurrency": 4}})
    m = run_score(served)
    assert m.counts["records"] == 6 and m.stats["backend"] == "openai"
    assert_same_labels(read_records(cfg.stage_dir("generate")).to_list(),
                       read_records(served.stage_dir("score")).to_list())


def test_on_policy_training_against_the_served_teacher(generated, server, smollm2_dir, tmp_path):
    """`train.kd.teacher_probs: served`: a 4-layer SmolLM2 student samples, the real server scores, one step."""
    from distillkit.records import write_shard, record_features
    from distillkit.train.stage import run_train

    cfg, _ = generated
    run = validate_recipe({
        "name": "op", "output_dir": str(tmp_path), "stages": ["filter", "train"],
        "generate": {"teacher": {"model": str(smollm2_dir)}},
        "train": {"student": {"model": str(smollm2_dir), "keep_layers": "first:4"}, "method": "full",
                  "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "num_train_epochs": 1, "max_length": 256, "bf16": False,
                  "gradient_checkpointing": False, "logging_steps": 1, "save_steps": 1000,
                  "on_policy": {"enabled": True, "max_new_tokens": 12},
                  "kd": {"enabled": True, "teacher_probs": "served", "divergence": "reverse_kl",
                         "teacher_server": {"topk": K, "openai": {"base_url": server + "/v1",
                                                                  "model": str(smollm2_dir)}}}}})
    records = read_records(cfg.stage_dir("generate")).to_list()
    one_per_prompt = list({r["prompt_id"]: r for r in records}.values())[:2]
    write_shard(run.stage_dir("filter"), 0, one_per_prompt, record_features(K))
    m = run_train(run)
    (point,) = m.stats["loss_curve"]
    assert m.stats["global_steps"] == 1 and 0 < point["kl"] < 50 and point["loss"] > 0
