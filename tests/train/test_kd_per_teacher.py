"""Soft-label KD per record with its own teacher's labels (issue 34 item 3, `generate.teachers`): records of a teacher
sharing the student's tokenizer keep their ids, records of a teacher on another vocabulary are mapped with that
teacher's own cross-tokenizer map, each decided per teacher (the record's `teacher` column), not once for all.

Every mixed build is compared with building each teacher's records alone, the way a one-teacher run does."""

from __future__ import annotations

import json
import math
import shutil
from contextlib import nullcontext

import numpy as np
import pytest

from distillkit.errors import DistillkitError

rt = pytest.importorskip("distillkit.testing.real_tokenizers")

SAME, OTHER = "org/tiny-teacher", "org/qwen-teacher"  # model specs in the records' `teacher` column
TEXTS = ["so</think>\n\nThe answer is 7.", "add 3 and 4. 3 + 4 = 7.</think> so the answer is \\boxed{7}",
         "first 12 + 30 = 42.</think> the answer is 42", "hmm, 5 * 6 = 30.</think> 30"]


def _load(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def tiny(tiny_qwen2):
    return _load(tiny_qwen2)


@pytest.fixture(scope="module")
def qwen():
    return _load(rt.r1_distill_qwen_tokenizer())


def traces(tok, teacher: str, texts, start: int = 0) -> list[dict]:
    """Records as `tok`'s model would store them: its ids (EOS last) and a top-3 row per token [the token .7,
    EOS .2, "!" .05]; `teacher` in the teacher column."""
    from distillkit.records import make_record

    bang = tok("!", add_special_tokens=False)["input_ids"][0]
    out = []
    for i, text in enumerate(texts, start):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(make_record(prompt_id=f"p{i}", problem="q", messages=[{"role": "user", "content": f"q{i}"}],
                               prefill="<think>\n", completion=text, completion_ids=ids, teacher=teacher,
                               topk_ids=[[x, tok.eos_token_id, bang] for x in ids],
                               topk_logprobs=[[math.log(0.7), math.log(0.2), math.log(0.05)]] * len(ids)))
    return out


def interleave(a: list, b: list) -> list:
    return [r for pair in zip(a, b) for r in pair]


def loader(tokenizers: dict, calls: list):
    def load(spec):
        calls.append(spec)
        return tokenizers[spec]
    return load


def build(records, student, tmp_path, name, **kw):
    from distillkit.train.data import build_train_dataset

    return build_train_dataset(records, student, None, use_kd=True, packing=False, cache_dir=tmp_path / name, **kw)


def same_examples(mixed, alone: list, rtol: float = 1e-5) -> None:
    """Each example of the mixed build equals the one its teacher's records gave alone (logprobs to `rtol`)."""
    assert len(mixed) == len(alone)
    for got, want in zip(mixed, alone):
        assert got["input_ids"] == want["input_ids"] and got["labels"] == want["labels"]
        assert got["kd_mask"] == want["kd_mask"]
        assert np.array_equal(np.asarray(got["kd_ids"]), np.asarray(want["kd_ids"]))
        assert np.allclose(np.asarray(got["kd_logprobs"]), np.asarray(want["kd_logprobs"]), rtol=rtol)


def test_each_record_is_labelled_with_its_own_teachers_tokenizer(tiny, qwen, tmp_path):
    """A teacher with the student's tokenizer keeps its ids and rows; one with Qwen's BPE is mapped with Qwen's map;
    only that teacher's tokenizer is loaded."""
    from distillkit.train.teachers import LabelTeachers

    a, b = traces(tiny, SAME, TEXTS), traces(qwen, OTHER, TEXTS, start=10)
    ds_a, info_a = build(a, tiny, tmp_path, "a")
    ds_b, info_b = build(b, tiny, tmp_path, "b", teacher_tokenizer=qwen)
    assert info_a["teacher_ids_used"] and not info_b["teacher_ids_used"] and "teachers" not in info_a
    calls: list = []
    teachers = LabelTeachers(SAME, cross_tokenizer=True, load=loader({SAME: tiny, OTHER: qwen}, calls))
    ds, info = build(interleave(a, b), tiny, tmp_path, "mixed", teachers=teachers)
    same_examples(ds, interleave(list(ds_a), list(ds_b)))
    assert calls == [OTHER]  # the student's own tokenizer needs no map
    assert info["teachers"] == {
        SAME: {"examples": 4, "kd_tokens": info_a["num_kd_tokens"], "teacher_ids_used": True},
        OTHER: {"examples": 4, "kd_tokens": info_b["num_kd_tokens"], "teacher_ids_used": False,
                "cross_tokenizer": info_b["cross_tokenizer"]}}
    assert info["cross_tokenizer"] == info_b["cross_tokenizer"]
    assert info["num_kd_tokens"] == info_a["num_kd_tokens"] + info_b["num_kd_tokens"]
    assert info["teacher_ids_used"] is False  # not every teacher's ids are the student's
    # one decision for all records (a one-teacher run's) re-tokenizes the first teacher's records too
    ds_one, _ = build(interleave(a, b), tiny, tmp_path, "one", teacher_tokenizer=qwen)
    assert ds_one[0]["kd_ids"] != ds_a[0]["kd_ids"]


def test_a_teacher_on_another_vocabulary_without_cross_tokenizer_is_named(tiny, qwen, tmp_path):
    from distillkit.train.teachers import LabelTeachers

    calls: list = []
    teachers = LabelTeachers(SAME, cross_tokenizer=False, load=loader({SAME: tiny, OTHER: qwen}, calls))
    records = interleave(traces(tiny, SAME, TEXTS), traces(qwen, OTHER, TEXTS, start=10))
    with pytest.raises(DistillkitError, match=f"teacher {OTHER}.*train.kd.cross_tokenizer: true"):
        build(records, tiny, tmp_path, "x", teachers=teachers)
    assert calls == []
    # the same teacher alone is fine when it is the student's family
    ds, info = build(traces(tiny, SAME, TEXTS), tiny, tmp_path, "y", teachers=teachers)
    assert info["teachers"] == {SAME: {"examples": 4, "kd_tokens": info["num_kd_tokens"], "teacher_ids_used": True}}


def test_old_records_without_a_teacher_go_to_the_labelling_teacher(tiny, qwen, tmp_path):
    """Records with an empty teacher column (written before it was filled) are the default (labelling) teacher's:
    here Qwen's, mapped like its named records; a chat row without ids among them trains on its text."""
    from distillkit.records import make_record
    from distillkit.train.teachers import LabelTeachers

    old = traces(qwen, "", TEXTS[:2], start=20)
    named = traces(qwen, OTHER, TEXTS[2:], start=30)
    a = traces(tiny, SAME, TEXTS[:2], start=40)
    chat = make_record(prompt_id="c", problem="q", messages=[{"role": "user", "content": "hi"}], completion="hello")
    calls: list = []
    teachers = LabelTeachers(OTHER, cross_tokenizer=True, load=loader({SAME: tiny, OTHER: qwen}, calls))
    ds, info = build(old + a + [chat] + named, tiny, tmp_path, "mixed", teachers=teachers)
    ds_b, info_b = build(old + named, tiny, tmp_path, "b", teacher_tokenizer=qwen)
    ds_a, _ = build(a, tiny, tmp_path, "a")
    ds_chat, _ = build([chat], tiny, tmp_path, "chat", require_topk=False)
    rows = list(ds)
    same_examples(rows[:4] + rows[5:], list(ds_b)[:2] + list(ds_a) + list(ds_b)[2:])
    assert (rows[4]["input_ids"], rows[4]["labels"]) == (ds_chat[0]["input_ids"], ds_chat[0]["labels"])
    assert not any(rows[4]["kd_mask"])
    assert calls == [OTHER] and set(info["teachers"]) == {OTHER, SAME}
    assert info["teachers"][OTHER]["examples"] == 5  # four traces and the chat row
    assert info["teachers"][OTHER]["cross_tokenizer"] == info_b["cross_tokenizer"]


def test_a_stage_folder_is_decided_from_its_teacher_column(tiny, qwen, tmp_path):
    """Streamed from shards (the train stage's input), the per-teacher decision reads the light columns and gives
    the examples the in-memory records give."""
    from distillkit.records import StageRecords, record_features, write_shard
    from distillkit.train.teachers import LabelTeachers

    records = interleave(traces(tiny, SAME, TEXTS), traces(qwen, OTHER, TEXTS, start=10))
    write_shard(tmp_path / "filter", 0, records[:5], record_features(3))
    write_shard(tmp_path / "filter", 1, records[5:], record_features(3))
    make = lambda: LabelTeachers(SAME, cross_tokenizer=True, load=loader({SAME: tiny, OTHER: qwen}, []))  # noqa: E731
    ds, info = build(StageRecords(tmp_path / "filter"), tiny, tmp_path, "stage", teachers=make())
    ds_list, info_list = build(records, tiny, tmp_path, "list", teachers=make())
    same_examples(ds, list(ds_list), rtol=1e-3)  # shards store logprobs as float16
    assert info["teachers"] == info_list["teachers"] and info["teachers"][OTHER]["examples"] == 4


def test_a_live_teacher_is_refused_with_several_teacher_models(tmp_path):
    from distillkit.config import validate_recipe

    def recipe(models, **kd):
        return {"name": "x", "output_dir": str(tmp_path), "train": {"kd": {"enabled": True, **kd}},
                "generate": {"teachers": [{"name": f"t{i}", "model": m, "sources": [] if i else ["math"]}
                                          for i, m in enumerate(models)]}}

    with pytest.raises(DistillkitError, match="generate.teachers has 2.*teacher_probs: topk_tail"):
        validate_recipe(recipe(["org/a", "org/b"], teacher_probs="live"))
    validate_recipe(recipe(["org/a", "org/a"], teacher_probs="live"))  # one model, two routes: one live teacher
    validate_recipe(recipe(["org/a", "org/b"]))  # stored labels: each record's own teacher's


SMOL = "builtin:smollm2-135m-instruct"


def gemma_folder(tmp_path):
    """Gemma 3's tokenizer as a model folder (config.json for load_tokenizer_and_config; no weights)."""
    folder = tmp_path / "gemma3"
    shutil.copytree(rt.gemma3_tokenizer(), folder)
    (folder / "config.json").write_text(json.dumps({}))
    return folder


def two_teachers(tmp_path, gemma_dir, cross_tokenizer: bool):
    """A recipe routing math to SmolLM2 and the rest to Gemma 3, training a SmolLM2 student with KD on both."""
    from distillkit.config import validate_recipe

    return validate_recipe({
        "name": "x", "output_dir": str(tmp_path / "run"), "stages": ["filter", "train"],
        "generate": {"teachers": [{"name": "r1", "model": SMOL, "sources": ["math"]},
                                  {"name": "chat", "model": str(gemma_dir), "reasoning": False}]},
        "train": {"student": {"model": SMOL}, "packing": False, "max_length": 2048,
                  "kd": {"enabled": True, "cross_tokenizer": cross_tokenizer}}})


def test_preflight_checks_every_teachers_vocabulary(smollm2_dir, tmp_path):
    """The first teacher shares the student's tokenizer; the second's vocabulary is checked too: an error naming it
    without cross_tokenizer, its alignment measured on its own traces with it."""
    from distillkit.preflight import preflight
    from distillkit.records import record_features, write_shard

    gemma_dir = gemma_folder(tmp_path)
    errors = [f for f in preflight(two_teachers(tmp_path, gemma_dir, False), stages=["train"]) if f.severity == "error"]
    assert [f.check for f in errors] == ["vocab_compat"] and str(gemma_dir) in errors[0].message
    cfg = two_teachers(tmp_path, gemma_dir, True)
    records = traces(_load(smollm2_dir), SMOL, TEXTS) + traces(_load(gemma_dir), str(gemma_dir), TEXTS[:2], 10)
    write_shard(cfg.stage_dir("filter"), 0, records, record_features(3))
    findings = preflight(cfg, stages=["train"])
    assert not [f for f in findings if f.severity == "error"]
    cross = [f for f in findings if f.check == "cross_tokenizer"]
    assert len(cross) == 1 and str(gemma_dir) in cross[0].message and "on 2 traces" in cross[0].message


def test_the_train_stage_labels_smollm2_and_gemma3_records_each_with_its_own(smollm2_dir, tmp_path):
    """Real tokenizers, through the train stage's own tokenization step (the teachers' tokenizers loaded from the
    recipe's generate.teachers models): SmolLM2's records keep their ids (the student is SmolLM2), Gemma 3's
    (262k sentencepiece vocabulary) are mapped with Gemma's map, old records go to the run's first teacher."""
    from distillkit.train.stage import _tokenize_examples

    smol, gemma_dir = _load(smollm2_dir), gemma_folder(tmp_path)
    gemma = _load(gemma_dir)
    cfg = two_teachers(tmp_path, gemma_dir, cross_tokenizer=True)
    s, g, old = traces(smol, SMOL, TEXTS), traces(gemma, str(gemma_dir), TEXTS, 10), traces(smol, "", TEXTS[:1], 20)
    state = type("State", (), {"process_index": 0, "main_process_first": lambda self: nullcontext()})()
    ds, info = _tokenize_examples(cfg, state, interleave(s, g) + old, smol, None)
    ds_s, info_s = build(s + old, smol, tmp_path, "s")
    ds_g, info_g = build(g, smol, tmp_path, "g", teacher_tokenizer=gemma)
    same_examples(ds, interleave(list(ds_s)[:4], list(ds_g)) + list(ds_s)[4:])
    assert info["teachers"][SMOL] == {"examples": 5, "kd_tokens": info_s["num_kd_tokens"], "teacher_ids_used": True}
    figures = info["teachers"][str(gemma_dir)]["cross_tokenizer"]
    assert figures == info_g["cross_tokenizer"] and figures["share_positions_labelled"] > 0.5
