"""The score stage with a stand-in scorer: inputs (chat files, stage folders), alignment, skips, resume.

The stand-in answers like vLLM's prompt logprobs would be laid out: row t of a record is the
distribution at completion position t, whose rank-1 id is made the scored token itself, so a test
can see that every row sits at its token. The real engine and server are in test_score_smollm2.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from distillkit.config import validate_recipe
from distillkit.errors import ConfigError, DistillkitError
from distillkit.pipeline import stage_config_hash
from distillkit.records import make_record, read_manifest, read_records, write_shard, record_features
from distillkit.score.stage import prepare, run_score

K = 4


class FakeScorer:
    name = "fake"

    def __init__(self, tokenizer, max_len=None, fail_on_call=None):
        self.tokenizer, self.max_len = tokenizer, max_len
        self.calls, self.fail_on_call = [], fail_on_call

    def score(self, sequences, starts, k):
        self.calls.append([len(s) for s in sequences])
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # a crash in the middle of the run
        out = []
        for seq, start in zip(sequences, starts):
            comp = np.asarray(seq[start:], dtype=np.int32)
            ids = (comp[:, None] + np.arange(k, dtype=np.int32)[None]) % len(self.tokenizer)
            lps = np.tile(-np.arange(k, dtype=np.float32) - 0.5, (len(comp), 1))
            out.append((ids, lps))
        return out

    def close(self):
        pass


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def recipe(tmp_path, **score):
    return validate_recipe({"name": "s", "output_dir": str(tmp_path / "run"), "stages": ["score", "train"],
                            "score": {"topk": K, "shard_size": 2, **score}})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHATS = [
    {"messages": [{"role": "user", "content": "What is 2+3?"},
                  {"role": "assistant", "content": "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is \\boxed{5}."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."},
                  {"role": "assistant", "content": "7"}]},
    {"messages": [{"role": "user", "content": "1+1?"},
                  {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\n2 — 二"}]},
]


def test_chat_file_scored_in_the_trace_schema(tmp_path, smol_tok):
    cfg = recipe(tmp_path, input=str(write_jsonl(tmp_path / "chats.jsonl", CHATS)))
    scorer = FakeScorer(smol_tok)
    m = run_score(cfg, scorer=scorer)
    assert m.counts["records_in"] == 3 and m.counts["records"] == 3 and m.counts["skipped"] == 0
    assert m.stats["retokenized"] == 3 and m.stats["logprobs_mode"] == "raw_logprobs" and m.stats["topk"] == K
    records = {r["id"]: r for r in read_records(cfg.stage_dir("score")).to_list()}
    first = records["chats:0"]
    # the answer's "<think>\n" is the prefill (the prompt's end), the completion the rest
    assert first["prefill"] == "<think>\n" and first["completion"].startswith("2 plus 3")
    assert first["reasoning"] == "2 plus 3 is 5." and first["response"] == "The answer is \\boxed{5}."
    assert first["problem"] == "What is 2+3?" and first["messages"] == CHATS[0]["messages"][:1]
    assert records["chats:1"]["prefill"] == "" and records["chats:1"]["messages"][0]["role"] == "system"
    for rec in records.values():
        ids = rec["completion_ids"]
        assert ids[-1] == smol_tok.eos_token_id  # the turn's end is scored too
        assert smol_tok.decode(ids[:-1]) == rec["completion"]
        assert rec["completion_tokens"] == len(ids) == len(rec["topk_ids"])
        assert [row[0] for row in rec["topk_ids"]] == ids  # row t is the distribution at token t
        assert json.loads(rec["meta"])["scored_by"] == cfg.score.teacher.model
    # the sequence sent is the teacher's template over the prompt turns, the prefill, then the completion
    rendered = smol_tok.apply_chat_template(CHATS[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert first["prompt_tokens"] == len(smol_tok(rendered + "<think>\n", add_special_tokens=False)["input_ids"])
    assert scorer.calls == [[first["prompt_tokens"] + len(first["completion_ids"]),
                             records["chats:1"]["prompt_tokens"] + len(records["chats:1"]["completion_ids"])],
                            [records["chats:2"]["prompt_tokens"] + len(records["chats:2"]["completion_ids"])]]
    # a finished output is not scored again
    again = FakeScorer(smol_tok)
    run_score(cfg, scorer=again)
    assert again.calls == []


def test_prompt_response_columns_and_missing_columns(tmp_path, smol_tok):
    rows = [{"q": "What is 2+3?", "a": "<think>\nfive\n</think>\n\n5"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = recipe(tmp_path, input=str(path), columns={"prompt": "q", "response": "a"})
    run_score(cfg, scorer=FakeScorer(smol_tok))
    (rec,) = read_records(cfg.stage_dir("score")).to_list()
    assert rec["messages"] == [{"role": "user", "content": "What is 2+3?"}] and rec["completion"] == "five\n</think>\n\n5"
    bad = recipe(tmp_path / "b", input=str(path))  # default: a `messages` column, which the file lacks
    with pytest.raises(DistillkitError, match=r"lacks the column\(s\) \['messages'\].*has \['a', 'q'\]"):
        run_score(bad, scorer=FakeScorer(smol_tok))


def test_stage_folder_keeps_the_teachers_own_ids_and_retokenizes_others(tmp_path, smol_tok):
    text = "Two plus three makes five.\n</think>\n\n5"
    own = smol_tok(text, add_special_tokens=False)["input_ids"] + [smol_tok.eos_token_id]
    odd = smol_tok("Two plus three", add_special_tokens=False)["input_ids"] + smol_tok(
        " makes five.\n</think>\n\n5", add_special_tokens=False)["input_ids"]  # same text, other split points
    foreign = [60000, 70000, 12]  # ids of another vocabulary (beyond this one)
    recs = [make_record(prompt_id="p", sample_index=i, problem="2+3", messages=[{"role": "user", "content": "2+3"}],
                        prefill="<think>\n", completion=text, completion_ids=ids, extra=1)
            for i, ids in enumerate([own, odd, foreign])]
    folder = tmp_path / "other-run" / "filter"
    write_shard(folder, 0, [{k: v for k, v in r.items() if k != "extra"} for r in recs], record_features())
    cfg = recipe(tmp_path, input=str(folder))
    m = run_score(cfg, scorer=FakeScorer(smol_tok))
    out = {r["id"]: r for r in read_records(cfg.stage_dir("score")).to_list()}
    assert out["p#0"]["completion_ids"] == own  # the sampled tokens, scored as they are
    assert out["p#1"]["completion_ids"] == odd  # also the teacher's ids (another split of the same text)
    assert out["p#2"]["completion_ids"] == own  # foreign ids: the text, tokenized by the teacher
    assert [json.loads(out[i]["meta"])["retokenized"] for i in ("p#0", "p#1", "p#2")] == [False, False, True]
    assert m.stats["retokenized"] == 1 and m.inputs == {str(folder): "unknown"}


def test_odd_records_are_skipped_with_a_reason(tmp_path, smol_tok):
    from transformers import AutoTokenizer

    from distillkit.testing.real_tokenizers import r1_distill_qwen_tokenizer

    r1 = AutoTokenizer.from_pretrained(r1_distill_qwen_tokenizer(think_prefill=True))  # the real 152k vocabulary
    msgs = [{"role": "user", "content": "Spell it."}]

    def rec(completion, **kw):
        return make_record(prompt_id="p", problem="x", messages=msgs, prefill="<think>\n", completion=completion, **kw)

    # Qwen's tokenizer normalises to NFC: a decomposed accent does not come back as it went in
    assert prepare(r1, rec("cafe\u0301\n</think>\n\ncafe\u0301"), None).skip == "not_roundtrip"
    assert prepare(r1, rec(""), None).skip == "empty_completion"
    ok = prepare(r1, rec("café\n</think>\n\ncafé 二 1234567"), None)
    assert ok.skip is None and ok.sequence[-1] == r1.eos_token_id
    # the R1 template opens the think block itself: it is in the prompt once, not twice
    assert r1.decode(ok.sequence[:ok.start]).endswith("<｜Assistant｜><think>\n")
    assert prepare(r1, rec("café\n</think>\n\ncafé 二 1234567"), len(ok.sequence) - 1).skip == "too_long"
    cut = prepare(r1, rec("long reasoning", finish_reason="length"), None)
    assert cut.sequence[-1] != r1.eos_token_id  # a trace cut at its budget did not end its turn

    rows = [{"messages": msgs + [{"role": "assistant", "content": c}]}
            for c in ("<think>\nfine\n</think>\n\nok", "<think>\n" + "word " * 200, "")]
    cfg = recipe(tmp_path, input=str(write_jsonl(tmp_path / "c.jsonl", rows)))
    m = run_score(cfg, scorer=FakeScorer(smol_tok, max_len=100))
    assert m.counts["records"] == 1 and m.stats["skipped_by_reason"] == {"empty_completion": 1, "too_long": 1}
    assert {x["id"] for x in m.stats["skipped_examples"]} == {"c:1", "c:2"}


def test_a_killed_run_resumes_without_losing_or_repeating(tmp_path, smol_tok):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i} " * (i + 1)}]}
            for i in range(7)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    whole = recipe(tmp_path / "whole", input=str(path))
    run_score(whole, scorer=FakeScorer(smol_tok))
    cfg = recipe(tmp_path, input=str(path))
    with pytest.raises(KeyboardInterrupt):
        run_score(cfg, scorer=FakeScorer(smol_tok, fail_on_call=3))
    assert read_manifest(cfg.stage_dir("score")) is None and len(list(cfg.stage_dir("score").glob("shard-*"))) == 2
    rest = FakeScorer(smol_tok)
    m = run_score(cfg, scorer=rest)
    assert len(rest.calls) == 2 and m.counts["shards_resumed"] == 2 and m.counts["records"] == 7
    assert read_records(cfg.stage_dir("score")).to_list() == read_records(whole.stage_dir("score")).to_list()


def test_input_and_config_errors(tmp_path, smol_tok):
    with pytest.raises(DistillkitError, match="score.input is auto.*neither stage"):
        run_score(recipe(tmp_path), scorer=FakeScorer(smol_tok))
    cfg = validate_recipe({"output_dir": str(tmp_path / "r"), "stages": ["generate", "score", "train"]})
    with pytest.raises(DistillkitError, match="score.input stage:generate: .* holds no records; run `distillkit generate`"):
        run_score(cfg, scorer=FakeScorer(smol_tok))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillkitError, match="without shard-\\*.parquet"):
        run_score(recipe(tmp_path, input=str(tmp_path / "empty")), scorer=FakeScorer(smol_tok))
    # transformers scores too (full logits: the backend of sampled labels, tests/score/test_score_sampled.py)
    assert recipe(tmp_path, teacher={"backend": "transformers"}).score.teacher.backend == "transformers"
    with pytest.raises(ConfigError, match="soft_labels: sampled .* teacher.backend=vllm returns only its top-k"):
        recipe(tmp_path, soft_labels="sampled")


def test_training_reads_the_scored_records_and_hashes_stay(tmp_path):
    plain = validate_recipe({"output_dir": str(tmp_path)})
    assert "score" not in plain.stages and plain.records_dir == tmp_path / "filter"
    assert plain.label_teacher is plain.generate.teacher
    other = plain.model_copy(update={"score": plain.score.model_copy(update={"topk": 5})})
    assert stage_config_hash(plain, "train") == stage_config_hash(other, "train")  # not run: not hashed
    scored = validate_recipe({"output_dir": str(tmp_path), "stages": ["generate", "filter", "score", "train"],
                              "score": {"teacher": {"model": "some/teacher"}}})
    assert scored.records_dir == tmp_path / "score" and scored.label_teacher.model == "some/teacher"
    changed = scored.model_copy(update={"score": scored.score.model_copy(update={"topk": 5})})
    assert stage_config_hash(scored, "train") != stage_config_hash(changed, "train")


def test_keys_added_later_leave_existing_hashes_alone(tmp_path):
    """`teacher.openai.serve` and `train.kd.teacher_server` are hashed only when set: a finished run of a recipe
    that does not use them keeps its hash (the quickstart's hashes below were those of runs made before them)."""
    from distillkit.config import load_recipe

    cfg = load_recipe("quickstart", [f"output_dir={tmp_path}"])
    before = {s: stage_config_hash(cfg, s) for s in ("generate", "filter", "train", "evaluate")}
    served = load_recipe("quickstart", [f"output_dir={tmp_path}", "generate.teacher.openai.serve=true"])
    assert stage_config_hash(served, "generate") != before["generate"]
    topk = load_recipe("quickstart", [f"output_dir={tmp_path}", "train.kd.teacher_server.topk=5"])
    assert stage_config_hash(topk, "train") != before["train"] and stage_config_hash(topk, "filter") == before["filter"]
    assert before == {"generate": "8658471f8fe76c6e", "filter": "23df901a3e3d56f2", "train": "fbf6e7e2be69d188",
                      "evaluate": "662f2784a24d9543"}


def test_serve_starts_a_local_server_and_close_stops_it(monkeypatch, smollm2_dir):
    """`openai.serve: true`: a vLLM server for the teacher on this machine (args from teacher.vllm), stopped on close."""
    import contextlib

    from distillkit.config import TeacherConfig
    from distillkit.engines import server
    from distillkit.engines.openai_http import open_endpoint

    events = []

    @contextlib.contextmanager
    def fake_server(path, seed, extra_args=()):
        events.append(("start", path, list(extra_args)))
        yield "http://127.0.0.1:1234"
        events.append(("stop",))

    monkeypatch.setattr(server, "vllm_server", fake_server)
    teacher = TeacherConfig(model=str(smollm2_dir), backend="openai", openai={"serve": True},
                            vllm={"max_model_len": 2048})
    url, model, stack = open_endpoint(teacher, seed=0, topk=32)
    assert url == "http://127.0.0.1:1234/v1" and model == str(smollm2_dir)
    assert events == [("start", str(smollm2_dir), ["--max-logprobs", "32", "--max-model-len", "2048"])]
    stack.close()
    assert events[-1] == ("stop",)
    plain = TeacherConfig(model="x", backend="openai", openai={"base_url": "http://h:8000/v1"})
    assert open_endpoint(plain)[:2] == ("http://h:8000/v1", "x")


def test_an_unreachable_server_is_named_with_the_key_to_fix(smollm2_dir):
    from distillkit.config import TeacherConfig
    from distillkit.engines.openai_http import EndpointError
    from distillkit.engines.scorers import ServerScorer

    teacher = TeacherConfig(model=str(smollm2_dir), backend="openai",
                            openai={"base_url": "http://127.0.0.1:9/v1", "timeout_s": 2})
    with pytest.raises(EndpointError, match=r"cannot reach the teacher endpoint http://127.0.0.1:9/v1 .* fix "
                                            r"train.kd.teacher_server.openai.base_url"):
        ServerScorer.from_config(teacher, 20, key="train.kd.teacher_server")


@pytest.mark.timeout(300)
def test_a_32k_token_trace_on_the_real_152k_tokenizer(tmp_path):
    """The per-token path at real size: an R1 trace of ~32k tokens is tokenized by the real R1-Distill-Qwen
    tokenizer, round-trips, and its 32k x 20 labels are written aligned (a quadratic step would hang here)."""
    from transformers import AutoTokenizer

    from distillkit.score.stage import score_shard
    from distillkit.testing.real_tokenizers import r1_distill_qwen_tokenizer
    from distillkit.testing.traces import synthetic_record

    r1 = AutoTokenizer.from_pretrained(r1_distill_qwen_tokenizer(think_prefill=True))
    rec = synthetic_record(0, chars=120_000)
    rec.pop("completion_ids", None)
    rows, skipped = score_shard([rec], FakeScorer(r1), 20, "r1", record_features(20))
    (row,) = rows
    n = len(row["completion_ids"])
    assert skipped == [] and n > 25_000 and row["topk_ids"].shape == (n, 20)
    assert r1.decode(row["completion_ids"][:-1]) == rec["completion"] and row["completion_ids"][-1] == r1.eos_token_id
    assert (row["topk_ids"][:, 0] == np.asarray(row["completion_ids"])).all()
    write_shard(tmp_path, 0, rows, record_features(20))
