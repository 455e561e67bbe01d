"""Stage outputs in either soft-label format: generate/score write packed-v1 by default, every reader (records,
filter, train, inspect) takes both, and an fp16 run written before keeps its hash and stays readable."""

from __future__ import annotations

import numpy as np
import pytest

from distillkit.config import RecipeConfig, validate_recipe
from distillkit.errors import ConfigError
from distillkit.pipeline import stage_config_hash
from distillkit.records import (
    StageOutput, StageRecords, iter_records, make_record, read_records, record_features, split_reasoning, write_shard,
)
from distillkit.softlabels import kl_topk
from distillkit.testing.traces import lm_soft_labels

K = 20


def traces(num: int, vocab: int = 49_152, tokens: int = 40, seed: int = 0) -> list[dict]:
    """Records with LM-shaped top-20 soft labels (the sampled token among them, as generate writes)."""
    out = []
    for i in range(num):
        ids, lp, sampled = lm_soft_labels(tokens + i, K, vocab, seed=seed + i)
        completion = f"Step {i}: {i} + {i} = {2 * i}.\n</think>\nThe answer is \\boxed{{{2 * i}}}."
        reasoning, response, closed = split_reasoning(completion, "<think>\n")
        out.append(make_record(prompt_id=f"p{i}", problem=f"What is {i} + {i}?", gold_answer=str(2 * i),
                               messages=[{"role": "user", "content": f"What is {i} + {i}?"}],
                               prefill="<think>\n", completion=completion, reasoning=reasoning, response=response,
                               reasoning_closed=closed, completion_ids=sampled, completion_tokens=len(sampled),
                               topk_ids=ids, topk_logprobs=lp))
    return out


def write_run(cfg: RecipeConfig, shards: list[tuple[list[dict], str]]) -> None:
    out = StageOutput(cfg.stage_dir("generate"), "generate", stage_config_hash(cfg, "generate"))
    out.begin()
    for i, (rows, fmt) in enumerate(shards):
        out.write_shard(i, rows, record_features(K, fmt))
    out.finish(counts={"records": sum(len(r) for r, _ in shards)})


def assert_same_labels(got: dict, want: dict, exact: bool) -> None:
    assert np.array_equal(np.asarray(got["topk_ids"]), want["topk_ids"])
    lp = np.asarray(got["topk_logprobs"], dtype=np.float32)
    if exact:
        np.testing.assert_array_equal(lp, want["topk_logprobs"].astype(np.float32))
    else:
        assert kl_topk(want["topk_logprobs"], lp).mean() < 1e-3


def test_a_run_resumed_across_formats_reads_as_one(tmp_path):
    """An fp16 shard written before packed-v1 and packed shards of the resumed run: every reader decodes both."""
    from distillkit.inspect import summarize_output

    cfg = RecipeConfig.model_validate({"name": "t", "output_dir": str(tmp_path / "run")})
    old, new = traces(3), traces(4, seed=100)
    new[1] = {**new[1], "topk_ids": None, "topk_logprobs": None}  # a record without labels stays without
    write_run(cfg, [(old, "fp16"), (new, "packed-v1")])
    folder = cfg.stage_dir("generate")
    records = StageRecords(folder)
    assert records.topk == K and records.column_names[-2:] == ["topk_ids", "topk_logprobs"]
    streamed = list(records)  # the train and score stages' reader: numpy arrays, decoded a batch at a time
    for got, want, exact in zip(streamed, old + new, [True] * 3 + [False] * 4):
        if want["topk_ids"] is None:
            assert got["topk_ids"] is None and got["topk_logprobs"] is None
        else:
            assert_same_labels(got, want, exact)
    assert streamed[3]["topk_logprobs"].dtype == np.float32
    table = read_records(folder)  # one datasets.Dataset over both: the fp16 schema throughout
    assert table.column_names == records.column_names and len(table) == 7
    assert_same_labels(table[3], new[0], exact=False)
    assert table[4]["topk_ids"] is None
    only = next(iter_records(folder, columns=["id", "topk_ids"]))
    assert list(only) == ["id", "topk_ids"] and only["topk_ids"] == old[0]["topk_ids"].tolist()
    labels = summarize_output(folder)["soft_labels"]
    assert labels["format"] == {"fp16": 1, "packed-v1": 1} and labels["k"] == K and 0 < labels["bytes_per_token"] < 80


def test_the_filter_keeps_packed_labels_and_train_reads_them_like_fp16(tmp_path, tiny_qwen2):
    """Filter copies the packed column as it is; the training examples built from it hold the same ids as from the
    same records in fp16, and logprobs within the codec's error."""
    from transformers import AutoTokenizer

    from distillkit.filter.stage import run_filter
    from distillkit.train.data import build_train_dataset

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    rows = []
    for rec in traces(6, vocab=len(tok)):
        ids = tok(rec["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        top, lp, _ = lm_soft_labels(len(ids), K, len(tok), seed=len(rows))
        top[:, 0] = ids  # the sampled token at rank 0, as at most positions of a real trace
        rows.append({**rec, "completion_ids": np.asarray(ids, np.int32), "completion_tokens": len(ids),
                     "topk_ids": top, "topk_logprobs": lp})
    built = {}
    for fmt in ("fp16", "packed-v1"):
        cfg = RecipeConfig.model_validate({"name": "t", "output_dir": str(tmp_path / fmt), "filter": {
            "verifiers": [{"kind": "truncation"}], "num_workers": 1}})
        write_run(cfg, [(rows, fmt)])
        run_filter(cfg, show_progress=False)
        kept = StageRecords(cfg.stage_dir("filter"))
        assert kept.soft_label_format == fmt and len(kept) == 6
        built[fmt] = build_train_dataset(kept, tok, max_length=None, use_kd=True, packing=False,
                                         cache_dir=tmp_path / f"cache-{fmt}")
    (fp16, info16), (packed, info) = built["fp16"], built["packed-v1"]
    assert info["num_kd_tokens"] == info16["num_kd_tokens"] == sum(len(r["completion_ids"]) for r in rows)
    for a, b in zip(fp16, packed):
        assert a["input_ids"] == b["input_ids"] and a["kd_ids"] == b["kd_ids"] and a["kd_mask"] == b["kd_mask"]
        on = np.asarray(a["kd_mask"], bool)
        assert kl_topk(np.asarray(a["kd_logprobs"])[on], np.asarray(b["kd_logprobs"])[on]).mean() < 1e-3


def test_generate_and_score_default_to_packed_and_old_hashes_hold():
    default = validate_recipe({"name": "t"})
    assert default.generate.soft_label_format == "packed-v1" == default.score.soft_label_format
    explicit = validate_recipe({"name": "t", "generate": {"soft_label_format": "packed-v1"}})
    fp16 = validate_recipe({"name": "t", "generate": {"soft_label_format": "fp16"}})
    # a finished run made before the key existed keeps its hash (it is left out at its default)
    assert stage_config_hash(default, "generate") == stage_config_hash(explicit, "generate")
    assert stage_config_hash(fp16, "generate") != stage_config_hash(default, "generate")


@pytest.mark.parametrize("data, key", [
    ({"generate": {"sampling": {"topk_logprobs": 300}}}, "sampling.topk_logprobs=300"),
    ({"score": {"topk": 300}}, "topk=300"),
])
def test_packed_width_limit_names_the_key_and_the_fix(data, key):
    with pytest.raises(ConfigError) as info:
        validate_recipe({"name": "t", **data})
    text = "\n".join(info.value.problems)
    assert key in text and "soft_label_format: fp16" in text, text
    fmt = {stage: {**section, "soft_label_format": "fp16"} for stage, section in data.items()}
    validate_recipe({"name": "t", **fmt})  # the fp16 format stores any width


def test_a_damaged_packed_value_is_an_error_naming_the_shard(tmp_path):
    from distillkit.errors import DistillkitError
    from distillkit.softlabels import encode_record

    rec = traces(1)[0]
    value = encode_record(rec["topk_ids"], rec["topk_logprobs"], rec["completion_ids"])
    value["ids_0"] = value["ids_0"][:-3]  # three ids short: a copy cut off, or another writer's bytes
    bad = {k: v for k, v in rec.items() if k not in ("topk_ids", "topk_logprobs")} | {"soft_labels": value}
    path = write_shard(tmp_path, 0, [bad], record_features(K, "packed-v1"))
    for read in (lambda: list(StageRecords(tmp_path)), lambda: read_records(tmp_path)):
        with pytest.raises(DistillkitError) as info:
            read()
        assert str(path) in str(info.value) and "do not decode" in str(info.value)


def test_a_packed_shard_given_to_train_as_a_parquet_file_is_decoded(tmp_path):
    from distillkit.config import MixtureSourceConfig
    from distillkit.data.sources import load_source

    rows = traces(2)
    path = write_shard(tmp_path, 0, rows, record_features(K, "packed-v1"))
    loaded = load_source(MixtureSourceConfig(path=str(path), weight=1.0), None)
    assert "soft_labels" not in loaded.column_names
    for got, want in zip(loaded, rows):
        assert_same_labels(got, want, exact=False)
