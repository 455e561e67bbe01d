"""`score.per_teacher`: a run with two teachers (generate.teachers) has each record scored by its own teacher, one
engine at a time, resumably; a record of another teacher stops the stage with its id.

Stand-in scorers (tests/score/test_score.py's FakeScorer) put their teacher's mark in every logprob row, so a test
reads off which teacher labelled each record.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from distillkit.config import validate_recipe
from distillkit.errors import ConfigError, DistillkitError
from distillkit.pipeline import stage_config_hash
from distillkit.records import make_record, read_manifest, read_records, record_features, write_shard
from distillkit.score.stage import run_score

K = 4
TEACHERS = [{"name": "reasoner", "model": "org/reasoner", "sources": ["math"]},
            {"name": "chat", "model": "org/chat", "reasoning": False}]
MARK = {"reasoner": 1.0, "chat": 2.0}


class MarkedScorer:
    """Top-k rows whose rank-1 id is the scored token and whose logprobs are -(mark + rank): the mark names the
    teacher. `fail_on_call`: a crash (KeyboardInterrupt) at that call."""

    def __init__(self, tokenizer, teacher, events=None, fail_on_call=None):
        self.tokenizer, self.max_len, self.name = tokenizer, None, "fake"
        self.teacher, self.events, self.fail_on_call = teacher, events if events is not None else [], fail_on_call
        self.calls = 0

    def score(self, sequences, starts, k):
        self.calls += 1
        self.events.append(("score", self.teacher))
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        out = []
        for seq, start in zip(sequences, starts):
            comp = np.asarray(seq[start:], dtype=np.int32)
            ids = (comp[:, None] + np.arange(k, dtype=np.int32)[None]) % len(self.tokenizer)
            lps = np.tile(-MARK[self.teacher] - np.arange(k, dtype=np.float32), (len(comp), 1))
            out.append((ids, lps))
        return out

    def close(self):
        self.events.append(("close", self.teacher))


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def generated(folder, teachers_by_row, meta_name=True):
    """A generate-like stage folder: record i answered by teachers_by_row[i] (its model in `teacher`, its name in
    meta.teacher_name unless `meta_name` is false: records from before names were kept)."""
    models = {t["name"]: t["model"] for t in TEACHERS}
    recs = []
    for i, name in enumerate(teachers_by_row):
        msgs = [{"role": "user", "content": f"question {i}?"}]
        meta = {"teacher_name": name} if meta_name and name in models else {}
        recs.append(make_record(prompt_id=f"p{i}", problem=f"question {i}?", messages=msgs, prefill="",
                                completion=f"answer {i} " * (i % 3 + 1), source="math" if name == "reasoner" else "chat",
                                teacher=models.get(name, name), meta=json.dumps(meta)))
    write_shard(folder, 0, recs, record_features())
    return folder


def recipe(tmp_path, folder, **score):
    return validate_recipe({"name": "s", "output_dir": str(tmp_path / "run"), "stages": ["score", "train"],
                            "generate": {"teachers": TEACHERS},
                            "score": {"topk": K, "shard_size": 2, "per_teacher": True, "input": str(folder), **score}})


ROWS = ["reasoner", "chat", "chat", "reasoner", "chat", "reasoner", "reasoner"]


def test_each_record_is_scored_by_its_own_teacher_one_engine_at_a_time(tmp_path, smol_tok, monkeypatch):
    from distillkit.engines import scorers

    events, built = [], []

    def make_scorer(section, seed=0):
        name = {"org/reasoner": "reasoner", "org/chat": "chat"}[section.teacher.model]
        built.append((name, section.teacher.model, section.topk))
        events.append(("start", name))
        return MarkedScorer(smol_tok, name, events)

    monkeypatch.setattr(scorers, "make_scorer", make_scorer)
    folder = generated(tmp_path / "gen", ROWS)
    cfg = recipe(tmp_path, folder)
    m = run_score(cfg)
    assert built == [("reasoner", "org/reasoner", K), ("chat", "org/chat", K)]
    # one engine at a time: the chat teacher starts after the reasoner's last shard and its close
    assert [e for e in events if e[0] != "score"] == [("start", "reasoner"), ("close", "reasoner"),
                                                      ("start", "chat"), ("close", "chat")]
    out = read_records(cfg.stage_dir("score")).to_list()
    # grouped by teacher in generate.teachers' order, input order within: p0 p3 p5 p6 | p1 p2 p4
    assert [r["prompt_id"] for r in out] == ["p0", "p3", "p5", "p6", "p1", "p2", "p4"]
    for rec in out:
        name = json.loads(rec["meta"])["teacher_name"]
        assert name == ROWS[int(rec["prompt_id"][1:])]
        assert rec["teacher"] == f"org/{name}" and json.loads(rec["meta"])["scored_by"] == f"org/{name}"
        assert np.allclose([row[0] for row in rec["topk_logprobs"]], -MARK[name], atol=0.1)  # packed: quantized
    assert m.counts["records"] == 7 and m.counts["shards"] == 4  # reasoner 4 records -> 2 shards, chat 3 -> 2
    assert m.counts["per_teacher"] == {
        "reasoner": {"records_in": 4, "records": 4, "skipped": 0, "shards": 2,
                     "tokens": sum(r["completion_tokens"] for r in out[:4])},
        "chat": {"records_in": 3, "records": 3, "skipped": 0, "shards": 2,
                 "tokens": sum(r["completion_tokens"] for r in out[4:])}}
    assert m.stats["teacher"] == {"reasoner": "org/reasoner", "chat": "org/chat"}
    assert cfg.label_teacher.model == "org/reasoner"  # the run's teacher; each record names its own


def test_records_without_a_name_go_by_their_model_and_given_scorers_are_used(tmp_path, smol_tok):
    folder = generated(tmp_path / "gen", ["chat", "reasoner"], meta_name=False)
    cfg = recipe(tmp_path, folder)
    given = {"reasoner": MarkedScorer(smol_tok, "reasoner"), "chat": MarkedScorer(smol_tok, "chat")}
    run_score(cfg, scorer=given)
    out = read_records(cfg.stage_dir("score")).to_list()
    assert [(r["prompt_id"], r["teacher"]) for r in out] == [("p1", "org/reasoner"), ("p0", "org/chat")]
    assert given["reasoner"].calls == 1 and given["chat"].calls == 1
    assert np.allclose([row[0] for row in out[1]["topk_logprobs"]], -MARK["chat"], atol=0.1)


def test_a_killed_run_resumes_without_losing_or_repeating(tmp_path, smol_tok):
    folder = generated(tmp_path / "gen", ROWS)
    whole = recipe(tmp_path / "whole", folder)
    run_score(whole, scorer={n: MarkedScorer(smol_tok, n) for n in MARK})
    cfg = recipe(tmp_path, folder)
    # the chat teacher's second shard crashes: the reasoner's 2 shards and chat's first are committed
    with pytest.raises(KeyboardInterrupt):
        run_score(cfg, scorer={"reasoner": MarkedScorer(smol_tok, "reasoner"),
                               "chat": MarkedScorer(smol_tok, "chat", fail_on_call=2)})
    assert read_manifest(cfg.stage_dir("score")) is None
    assert len(list(cfg.stage_dir("score").glob("shard-*"))) == 3
    rest = {n: MarkedScorer(smol_tok, n) for n in MARK}
    m = run_score(cfg, scorer=rest)
    assert rest["reasoner"].calls == 0 and rest["chat"].calls == 1  # only the missing shard is scored
    assert m.counts["shards_resumed"] == 3 and m.counts["records"] == 7
    assert m.counts["per_teacher"]["chat"]["records"] == 3 and m.counts["per_teacher"]["reasoner"]["records"] == 4
    assert read_records(cfg.stage_dir("score")).to_list() == read_records(whole.stage_dir("score")).to_list()


def test_a_record_of_another_teacher_is_a_clear_error(tmp_path, smol_tok):
    folder = generated(tmp_path / "gen", ["reasoner", "org/someone-else"])
    cfg = recipe(tmp_path, folder)
    scorers = {n: MarkedScorer(smol_tok, n) for n in MARK}
    with pytest.raises(DistillkitError, match=r"record 'p1#0' was written by teacher 'org/someone-else', which is not "
                                              r"among generate.teachers \(reasoner, chat\)"):
        run_score(cfg, scorer=scorers)
    assert scorers["reasoner"].calls == 0  # refused before any scoring


def test_per_teacher_config_errors_and_hashes(tmp_path):
    base = {"output_dir": str(tmp_path), "stages": ["generate", "score", "train"]}
    with pytest.raises(ConfigError, match="score.per_teacher .* generate.teachers is empty"):
        validate_recipe({**base, "score": {"per_teacher": True}})
    with pytest.raises(ConfigError, match="score.teacher is set too \\(some/teacher\\); remove one"):
        validate_recipe({**base, "generate": {"teachers": TEACHERS},
                         "score": {"per_teacher": True, "teacher": {"model": "some/teacher"}}})
    # the score section's own backend rules hold for every teacher's engine
    with pytest.raises(ConfigError, match=r"generate.teachers \(reasoner, backend vllm\): .*soft_labels: sampled"):
        validate_recipe({**base, "generate": {"teachers": TEACHERS}, "score": {"per_teacher": True,
                                                                              "soft_labels": "sampled"}})
    with pytest.raises(ConfigError, match="score.teacher's default model .*set score.per_teacher: true"):
        validate_recipe({**base, "generate": {"teachers": TEACHERS}})
    one = validate_recipe({**base, "generate": {"teachers": TEACHERS}, "score": {"teacher": {"model": "org/judge"}}})
    assert one.label_teacher.model == "org/judge"
    per = validate_recipe({**base, "generate": {"teachers": TEACHERS}, "score": {"per_teacher": True}})
    assert per.score_for("chat").teacher.model == "org/chat" and per.label_teacher.model == "org/reasoner"
    assert validate_recipe(per.model_dump(mode="json")).score.per_teacher  # a dumped config validates again
    assert stage_config_hash(per, "score") != stage_config_hash(one, "score")
    # per_teacher: false is not hashed: a run scored before the key existed keeps its hashes (computed at 97c013c)
    plain = validate_recipe({"output_dir": "/tmp/x43", "stages": ["generate", "score", "train"],
                             "score": {"teacher": {"model": "org/judge"}, "topk": 5}})
    assert (stage_config_hash(plain, "score"), stage_config_hash(plain, "train")) == ("7215ce58abd8f4ae",
                                                                                     "331309e5e95cf243")
