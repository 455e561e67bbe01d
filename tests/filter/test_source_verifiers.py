"""`filter.source_verifiers`: a prompt source's own verifier chain, and the funnel per source and per teacher.

R1's SFT data mixes reasoning traces (a gold answer, a <think> block) with general answers of a non-reasoning
teacher (neither): the general source gets a chain without math and format, which would reject all of it."""

import json

import pytest

from distillkit.config import RecipeConfig
from distillkit.config.loading import validate_recipe
from distillkit.errors import ConfigError
from distillkit.filter.stage import filter_records, run_filter, unrouted_source_chains
from distillkit.generate.curate import CORRECTNESS, unjudged_sources, verifiers_only
from distillkit.records import StageOutput, make_record, read_records, record_features, split_reasoning
from distillkit.stage_hash import stage_config_hash
from distillkit.verify.chain import Judge, Tally, all_step_names

GENERAL_CHAIN = [{"kind": "truncation"}, {"kind": "language"}, {"kind": "repetition"}, {"kind": "length"}]


def _math(pid: str, k: int, boxed: str, gold: str = "4") -> dict:
    completion = f"Two plus two.\n</think>\n\n\\boxed{{{boxed}}}"
    reasoning, response, closed = split_reasoning(completion, "<think>\n")
    return make_record(prompt_id=pid, sample_index=k, source="math", problem=f"{pid}?", gold_answer=gold,
                       prefill="<think>\n", completion=completion, reasoning=reasoning, response=response,
                       reasoning_closed=closed, completion_tokens=12, finish_reason="stop", teacher="org/r1",
                       meta=json.dumps({"teacher_name": "reasoner"}))


def _general(pid: str, k: int, text: str, finish: str = "stop") -> dict:
    # a non-reasoning teacher's answer after the empty think block: no gold answer, nothing boxed
    prefill = "<think>\n\n</think>\n\n"
    reasoning, response, closed = split_reasoning(text, prefill)
    return make_record(prompt_id=pid, sample_index=k, source="general", problem=f"{pid}?", gold_answer=None,
                       prefill=prefill, completion=text, reasoning=reasoning, response=response,
                       reasoning_closed=closed, completion_tokens=len(text.split()), finish_reason=finish,
                       teacher="org/v3", meta=json.dumps({"teacher_name": "chat"}))


def _records() -> list[dict]:
    return [
        _math("m1", 0, "4"), _math("m1", 1, "5"),                       # one right, one wrong
        _math("m2", 0, "4"), _math("m2", 1, "4 "),                      # both right
        _general("g1", 0, "Paris is the capital of France, on the Seine."),
        _general("g2", 0, "Write a haiku: autumn moonlight, a worm digs silently into the chestnut."),
        _general("g3", 0, "The answer is", finish="length"),              # truncated: the general chain rejects it
    ]


def _cfg(tmp_path, source_verifiers=None, **generate) -> RecipeConfig:
    filt = {"verifiers": [{"kind": "truncation"}, {"kind": "format"}, {"kind": "math", "timeout_s": 20}],
            "dedup": {"exact": False, "near": {"enabled": False}}, "num_workers": 1}
    if source_verifiers is not None:
        filt["source_verifiers"] = source_verifiers
    return RecipeConfig.model_validate({"name": "t", "output_dir": str(tmp_path / "run"), "filter": filt,
                                        **({"generate": generate} if generate else {})})


def test_a_source_chain_replaces_the_verifiers_for_its_records(tmp_path):
    recs = _records()
    plain = filter_records(recs, _cfg(tmp_path).filter, show_progress=False)
    # one chain for all: the general answers have no boxed answer and no gold answer, format rejects them
    assert plain.kept == [True, False, True, True, False, False, False]
    own = filter_records(recs, _cfg(tmp_path, {"general": GENERAL_CHAIN}).filter, show_progress=False)
    assert own.kept == [True, False, True, True, True, True, False]
    steps = [[s for s, _ in v] for v in own.verdicts]
    assert steps[0][:3] == ["truncation", "format", "math"]             # math records: filter.verifiers
    assert steps[4][:4] == ["truncation", "language", "repetition", "length"]  # general records: their own chain
    assert "math" not in steps[4] and "format" not in steps[4]
    assert own.verdicts[6][0] == ("truncation", own.verdicts[6][0][1]) and own.verdicts[6][0][1].passed is False


def test_the_funnel_keeps_one_row_per_verifier_and_adds_sources_and_teachers(tmp_path):
    cfg = _cfg(tmp_path, {"general": GENERAL_CHAIN})
    assert all_step_names(cfg.filter) == ["truncation", "language", "repetition", "length", "format", "math"]
    stats = filter_records(_records(), cfg.filter, show_progress=False).stats
    rows = {r["step"]: (r["in"], r["rejected"], r["out"]) for r in stats["funnel"]}
    # truncation judges every record (both chains have it); math judges only the 4 math records
    assert rows["truncation"] == (7, 1, 6) and rows["math"] == (6, 1, 5)
    assert sum(stats["outcomes"]["math"]["rejected"].values()) + sum(stats["outcomes"]["math"]["passed"].values()) == 4
    assert sum(sum(c.values()) for c in stats["outcomes"]["language"].values()) == 3
    t = stats["teachers"]
    assert set(t) == {"reasoner", "chat"}
    assert (t["reasoner"]["records"], t["reasoner"]["kept"], t["reasoner"]["sources"]) == (4, 3, ["math"])
    assert t["reasoner"]["rejections"] == {"math": {"wrong_answer": 1}}
    assert (t["chat"]["records"], t["chat"]["kept"], t["chat"]["sources"]) == (3, 2, ["general"])
    assert t["chat"]["rejections"] == {"truncation": {"truncated_at_max_tokens": 1}}
    assert stats["sources"]["general"]["rejections"] == t["chat"]["rejections"]


def test_the_stage_judges_each_source_with_its_chain_and_writes_the_teacher_funnel(tmp_path):
    cfg = _cfg(tmp_path, {"general": GENERAL_CHAIN})
    recs = _records()
    gen = StageOutput(cfg.stage_dir("generate"), "generate", stage_config_hash(cfg, "generate"))
    gen.begin()
    gen.write_shard(0, recs[:3], record_features())   # sources mixed across shards
    gen.write_shard(1, recs[3:], record_features())
    gen.finish(counts={"records": len(recs)})
    m = run_filter(cfg, show_progress=False)
    assert m.counts["kept"] == 5
    kept = {r["id"] for r in read_records(cfg.stage_dir("filter"))}
    assert kept == {"m1#0", "m2#0", "m2#1", "g1#0", "g2#0"}
    assert m.stats["teachers"]["chat"]["kept"] == 2 and m.stats["teachers"]["reasoner"]["kept"] == 3
    assert m.stats["teachers"]["chat"]["rejections"] == {"truncation": {"truncated_at_max_tokens": 1}}


def test_datatrove_local_executor_runs_the_source_chains(tmp_path):
    pytest.importorskip("datatrove")
    cfg = _cfg(tmp_path, {"general": GENERAL_CHAIN})
    cfg.filter.executor.kind, cfg.filter.executor.workers = "local", 2
    recs = _records()
    gen = StageOutput(cfg.stage_dir("generate"), "generate", stage_config_hash(cfg, "generate"))
    gen.begin()
    gen.write_shard(0, recs[:4], record_features())
    gen.write_shard(1, recs[4:], record_features())
    gen.finish(counts={"records": len(recs)})
    m = run_filter(cfg, show_progress=False)
    assert m.counts["kept"] == 5 and m.stats["teachers"]["chat"]["kept"] == 2


def test_recipes_without_source_chains_keep_their_hashes(tmp_path):
    base = _cfg(tmp_path)
    explicit = _cfg(tmp_path, {})
    for stage in ("filter", "train"):
        assert stage_config_hash(base, stage) == stage_config_hash(explicit, stage)
    own = _cfg(tmp_path, {"general": GENERAL_CHAIN})
    assert stage_config_hash(own, "filter") != stage_config_hash(base, "filter")
    assert stage_config_hash(own, "generate") == stage_config_hash(base, "generate")  # no resampling: not upstream


def test_a_bad_spec_names_the_source_and_the_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        validate_recipe({"filter": {"source_verifiers": {"general": [{"kind": "truncation"}, {"kind": "maths"}]}}})
    text = str(e.value)
    assert "filter.source_verifiers.general" in text and "maths" in text and "math" in text
    with pytest.raises(ConfigError) as e:
        validate_recipe({"filter": {"source_verifiers": {"general": [{"kind": "length", "max_tokenz": 9}]}}})
    assert "filter.source_verifiers.general" in str(e.value) and "max_tokenz" in str(e.value)


def test_a_source_no_teacher_answers_is_a_warning_not_an_error(tmp_path):
    teachers = [{"name": "reasoner", "model": "org/r1", "sources": ["math"]},
                {"name": "chat", "model": "org/v3", "sources": ["general"], "reasoning": False}]
    cfg = _cfg(tmp_path, {"chitchat": GENERAL_CHAIN}, teachers=teachers)
    (line,) = unrouted_source_chains(cfg)
    assert "filter.source_verifiers.chitchat" in line and "generate.teachers" in line
    assert unrouted_source_chains(_cfg(tmp_path, {"general": GENERAL_CHAIN}, teachers=teachers)) == []
    catch_all = [teachers[0], {**teachers[1], "sources": []}]   # any source may reach the catch-all teacher
    assert unrouted_source_chains(_cfg(tmp_path, {"chitchat": GENERAL_CHAIN}, teachers=catch_all)) == []


def test_generate_curation_judges_a_prompt_with_its_source_chain(tmp_path):
    fcfg = _cfg(tmp_path, {"general": GENERAL_CHAIN}).filter
    resample = verifiers_only(fcfg)          # resampling: every verifier of each chain
    assert [v.kind for v in resample.source_verifiers["general"]] == [v["kind"] for v in GENERAL_CHAIN]
    with Judge(resample) as judge:
        ok = judge.judge(_records(), Tally(steps=judge.all_steps())).passed_verifiers
    assert ok.tolist() == [True, False, True, True, True, True, False]
    screen = verifiers_only(fcfg, CORRECTNESS)  # pre-screen: no correctness verifier judges a general answer
    assert screen.source_verifiers == {"general": []} and unjudged_sources(screen) == {"general"}
