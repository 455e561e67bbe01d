"""Sampled soft labels end to end on tiny local models: `score` (transformers backend) draws them from the teacher's
full logits and writes sampled-v1, the draws are reproducible whatever the batching, `train` consumes them with
`teacher_probs: sampled` (and refuses them under a top-k loss); generate's transformers backend draws them too."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distillkit.config import validate_recipe
from distillkit.errors import ConfigError, DistillkitError
from distillkit.records import StageRecords, read_records
from distillkit.score.stage import run_score

N = 16
TRAIN = {"method": "full", "learning_rate": 1e-3, "num_train_epochs": 2, "per_device_train_batch_size": 2,
         "gradient_accumulation_steps": 1, "max_length": 128, "packing": False, "gradient_checkpointing": False,
         "bf16": False, "logging_steps": 1, "save_steps": 1000}


def chats(path, num: int = 5):
    rows = []
    for i in range(num):
        a, b = 3 + i, 20 - i
        answer = f"<think>\nfirst add {a} and {b}. {a} + {b} = {a + b}.</think> so the answer is \\boxed{{{a + b}}}"
        rows.append({"messages": [{"role": "user", "content": f"how many is {a} plus {b}?"},
                                  {"role": "assistant", "content": answer}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(out, teacher, student, inp, score=None, kd=None):
    return validate_recipe({
        "name": "s", "output_dir": str(out), "stages": ["score", "train"],
        "score": {"teacher": {"model": str(teacher), "backend": "transformers", "vllm": {"dtype": "float32"}},
                  "input": str(inp), "soft_labels": "sampled", "soft_label_samples": N, "shard_size": 2,
                  **(score or {})},
        "train": {"student": {"model": str(student)}, **TRAIN,
                  "kd": {"enabled": True, "alpha": 0.5, "teacher_probs": "sampled", **(kd or {})}}})


def teacher_logprobs(model_dir, record) -> torch.Tensor:
    """The teacher's raw log-softmax at each completion position of a scored record (a plain forward)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.engines.base import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    _, pids, _ = render_prompt(tok, record["messages"], record["prefill"])
    ids = list(pids) + list(record["completion_ids"])
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, len(pids) - 1:-1].float().log_softmax(-1)


@pytest.fixture(scope="module")
def scored(tiny_qwen2, tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled")
    cfg = recipe(out / "run", tiny_qwen2, tiny_llama, chats(out / "chats.jsonl"))
    return cfg, run_score(cfg)


def test_score_writes_sampled_labels_drawn_from_the_teacher(scored, tiny_qwen2):
    cfg, m = scored
    assert m.stats["soft_label_format"] == "sampled-v1" and m.stats["soft_label_samples"] == N
    assert m.stats["backend"] == "transformers" and m.stats["soft_label_bytes_per_token"] > 0
    records = StageRecords(cfg.stage_dir("score"))
    assert records.soft_label_format == "sampled-v1" and records.topk == N
    rows = list(records)
    assert len(rows) == 5 and m.counts["records"] == 5
    for r in rows:
        counts = np.rint(np.exp(r["topk_logprobs"].astype(np.float64)) * N)
        assert r["topk_ids"].shape == (len(r["completion_ids"]), N) and (counts.sum(1) == N).all()
        lp = teacher_logprobs(tiny_qwen2, r)
        own = lp[torch.arange(len(lp)), torch.as_tensor(r["completion_ids"]).long()].numpy()
        assert np.abs(r["token_logprobs"] - own).max() <= 0.009 * np.abs(own).max() + 0.01  # one byte's grid
        assert (r["topk_ids"][counts > 0] < lp.shape[1]).all()
    # Draw frequencies against the teacher's probabilities, pooled over every position: counts / N estimates p, so
    # sum(counts / N) over the drawn ids of a position has expectation 1 and the mean of p at the drawn ids is
    # E_p[p(x)] (its sum of squares); a chi-square-free check with a 5-SE band.
    drawn_p, expected = [], []
    for r in rows:
        p = teacher_logprobs(tiny_qwen2, r).exp()
        ids = torch.as_tensor(r["topk_ids"]).long()
        w = torch.as_tensor(np.exp(r["topk_logprobs"].astype(np.float64)))
        drawn_p.append((w * p.gather(1, ids).double()).sum(1))
        expected.append((p.double() ** 2).sum(1))
    drawn_p, expected = torch.cat(drawn_p), torch.cat(expected)
    se = drawn_p.std() / len(drawn_p) ** 0.5
    assert abs(drawn_p.mean() - expected.mean()) < 5 * se + 1e-9


def test_draws_are_reproducible_whatever_the_batching(scored, tiny_qwen2, tiny_llama, tmp_path):
    cfg, _ = scored
    again = recipe(tmp_path / "run", tiny_qwen2, tiny_llama, cfg.score.input, score={"shard_size": 3})
    run_score(again)  # other shards, so other batches: the same draws per record (seeded by run seed + tokens)
    first = {r["id"]: r for r in read_records(cfg.stage_dir("score")).to_list()}
    second = {r["id"]: r for r in read_records(again.stage_dir("score")).to_list()}
    assert first.keys() == second.keys()
    for rid, r in first.items():
        assert r["topk_ids"] == second[rid]["topk_ids"] and r["topk_logprobs"] == second[rid]["topk_logprobs"]
    reseeded = recipe(tmp_path / "other", tiny_qwen2, tiny_llama, cfg.score.input)
    reseeded = reseeded.model_copy(update={"seed": reseeded.seed + 1})
    run_score(reseeded)
    other = {r["id"]: r for r in read_records(reseeded.stage_dir("score")).to_list()}
    assert any(other[rid]["topk_ids"] != r["topk_ids"] for rid, r in first.items())


def test_train_consumes_sampled_labels_and_refuses_them_under_a_topk_loss(scored, tiny_llama):
    from transformers import AutoTokenizer

    from distillkit.train.data import build_train_dataset
    from distillkit.train.stage import run_train

    cfg, _ = scored
    m = run_train(cfg)
    first = m.stats["loss_curve"][0]
    # logged as kl_sampled, never as kl: KL(counts / N || student) sits above the KL by a gap set by the teacher
    assert "kl" not in first and first["kl_sampled"] > 0
    assert first["loss"] == pytest.approx(0.5 * first["ce"] + 0.5 * first["kl_sampled"], rel=1e-4)
    assert m.stats["data"]["soft_label_format"] == "sampled-v1" and m.stats["data"]["topk"] == N
    assert m.stats["data"]["num_kd_tokens"] > 0
    assert m.stats["loss_curve"][-1]["kl_sampled"] < first["kl_sampled"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(DistillkitError, match="sampled soft labels .*teacher_probs=topk_tail reads top-k"):
        build_train_dataset(StageRecords(cfg.stage_dir("score")), tok, 128, use_kd=True, packing=False,
                            teacher_probs="topk_tail")
    topk = [{**r, "token_logprobs": None} for r in read_records(cfg.stage_dir("score")).to_list()]
    with pytest.raises(DistillkitError, match="teacher_probs: sampled reads sampled soft labels, and the records "
                                              "carry top-k"):
        build_train_dataset(topk, tok, 128, use_kd=True, packing=False, teacher_probs="sampled")


def test_transformers_scorer_topk_is_the_forward_pass(tiny_qwen2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.engines.hf_scorer import TransformersScorer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    scorer = TransformersScorer(model, tok, batch_size=2, rows_per_pass=3)
    seqs = [list(range(5, 25)), list(range(40, 47)), list(range(60, 90))]  # padded batches, chunked projection
    starts = [4, 2, 10]
    for (ids, lps), seq, start in zip(scorer.score(seqs, starts, 5), seqs, starts):
        with torch.no_grad():
            lp = model(torch.tensor([seq])).logits[0, start - 1:-1].float().log_softmax(-1)
        want = lp.topk(5, dim=-1)
        assert np.array_equal(ids, want.indices.numpy())
        np.testing.assert_allclose(lps, want.values.numpy(), atol=1e-4)


def test_config_errors_name_the_key_and_the_fix(tmp_path, tiny_qwen2):
    from distillkit.config import RecipeConfig

    base = {"name": "s", "output_dir": str(tmp_path), "stages": ["score"]}
    hf = {"model": str(tiny_qwen2), "backend": "transformers"}
    for cfg in (validate_recipe({**base, "generate": {"teacher": hf, "sampling": {"topk_logprobs": 5}}}),
                validate_recipe({**base, "score": {"teacher": hf, "soft_labels": "sampled", "soft_label_samples": 8},
                                 "generate": {"teacher": hf, "sampling": {"soft_labels": "sampled"}}})):
        assert RecipeConfig.model_validate_json(cfg.model_dump_json()) == cfg  # as replicas and manifests reload it
    with pytest.raises(ConfigError, match="soft_labels: sampled .*teacher.backend=vllm returns only its top-k.*"
                                          "score.teacher.backend: transformers"):
        validate_recipe({**base, "score": {"soft_labels": "sampled"}})
    with pytest.raises(ConfigError, match="topk only configure top-k labels, and soft_labels is sampled"):
        validate_recipe({**base, "score": {"soft_labels": "sampled", "teacher": hf, "topk": 8}})
    with pytest.raises(ConfigError, match="soft_label_samples set the draws of soft_labels: sampled"):
        validate_recipe({**base, "score": {"soft_label_samples": 8}})
    with pytest.raises(ConfigError, match="soft_label_samples"):
        validate_recipe({**base, "score": {"soft_labels": "sampled", "teacher": hf, "soft_label_samples": 300}})
    with pytest.raises(ConfigError, match="estimates the forward KL only.*set kd.divergence: forward_kl"):
        validate_recipe({**base, "train": {"kd": {"enabled": True, "teacher_probs": "sampled", "divergence": "jsd"}}})
    with pytest.raises(ConfigError, match="does not map sampled ones.*score.soft_labels: topk.*"
                                          "kd.teacher_probs: topk_tail.*cross_tokenizer: false") as refused:
        validate_recipe({**base, "train": {"kd": {"enabled": True, "teacher_probs": "sampled",
                                                  "cross_tokenizer": True}}})
    assert "Use teacher_probs: topk_tail" not in str(refused.value)  # alone, it would refuse the sampled records
    with pytest.raises(ConfigError, match="teacher.backend=vllm returns only its top-k logprobs .* add the `score` "
                                          "stage with score.soft_labels: sampled"):
        validate_recipe({**base, "generate": {"sampling": {"soft_labels": "sampled"}}})
    with pytest.raises(ConfigError, match="topk_logprobs=20 would be ignored"):
        validate_recipe({**base, "generate": {"teacher": hf, "sampling": {"soft_labels": "sampled",
                                                                          "topk_logprobs": 20}}})


def test_generate_on_transformers_draws_sampled_labels(tiny_qwen2, tmp_path):
    from distillkit.generate.stage import run_generate

    cfg = validate_recipe({"name": "t", "output_dir": str(tmp_path), "generate": {
        "teacher": {"model": str(tiny_qwen2), "backend": "transformers", "vllm": {"dtype": "float32"}},
        "prompts": {"builtin": "arith", "builtin_args": {"num": 2}},
        "sampling": {"n": 2, "max_tokens": 10, "seed": 7, "soft_labels": "sampled", "soft_label_samples": 8},
        "shard_size": 2}})
    m = run_generate(cfg)
    assert m.stats["soft_label_format"] == "sampled-v1" and m.stats["soft_label_samples"] == 8
    rows = list(StageRecords(cfg.stage_dir("generate")))
    assert len(rows) == 4
    for r in rows:
        counts = np.rint(np.exp(r["topk_logprobs"].astype(np.float64)) * 8)
        assert r["topk_ids"].shape == (len(r["completion_ids"]), 8) and (counts.sum(1) == 8).all()
        lp = teacher_logprobs(tiny_qwen2, r)
        own = lp[torch.arange(len(lp)), torch.as_tensor(r["completion_ids"]).long()].numpy()
        assert np.abs(r["token_logprobs"] - own).max() <= 0.009 * np.abs(own).max() + 0.01
