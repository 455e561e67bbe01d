"""Dedup, decontamination, selection, and the filter stage end to end with exact funnel numbers."""

import json

import pytest
import yaml

from distillkit.config import BenchmarkSource, DedupConfig, RecipeConfig, SelectionConfig, VerifierSpec
from distillkit.errors import DistillkitError
from distillkit.filter.selection import pass_rates, select
from distillkit.filter.stage import funnel_table, run_filter
from distillkit.pipeline import stage_config_hash
from distillkit.records import StageOutput, make_record, read_manifest, read_records, record_features, split_reasoning
from distillkit.registry import VERIFIERS
from distillkit.verify.decontaminate import Decontaminator
from distillkit.verify.dedup import find_duplicates
from distillkit.verify.verifiers.base import Verdict, Verifier

LONG = ("We compute the quantity step by step, checking every intermediate value before moving on to the "
        "next part of the problem so that no arithmetic slip survives into the final answer. ")


def r(pid, k, completion, **kw):
    return make_record(prompt_id=pid, sample_index=k, problem=f"problem {pid}", completion=completion, **kw)


def test_exact_and_near_duplicates_keep_the_first():
    recs = [r("p", 0, LONG + "Answer 4."), r("p", 1, "  " + LONG.upper() + "Answer 4.  "),
            r("p", 2, LONG.replace("Answer", "") + "answer: 4!"),  # same words, other punctuation
            r("p", 3, "Something else entirely."),
            r("q", 0, LONG + "Answer 4.")]  # another prompt: not compared under scope=prompt
    got = find_duplicates(recs, range(5), DedupConfig())
    assert {i: v.reason for i, v in got.items()} == {1: "exact_duplicate", 2: "near_duplicate"}
    assert got[1].detail == "of p#0"
    glob = find_duplicates(recs, range(5), DedupConfig(scope="global"))
    assert glob[4].reason == "exact_duplicate"
    # Only candidates are compared: once #0 is out, #1 is the first copy.
    assert 1 not in find_duplicates(recs, [1, 3], DedupConfig())


def test_near_duplicate_threshold():
    words = [f"w{i}" for i in range(200)]
    one_word_changed = words[:100] + ["changed"] + words[101:]  # Jaccard of 5-gram shingles ~0.95
    half_changed = words[:100] + [f"x{i}" for i in range(100)]  # ~0.33
    recs = [r("p", k, " ".join(w)) for k, w in enumerate([words, one_word_changed, half_changed])]
    got = find_duplicates(recs, range(3), DedupConfig())
    assert {i: v.reason for i, v in got.items()} == {1: "near_duplicate"}


def test_decontamination_from_local_files(tmp_path):
    bench = tmp_path / "aime.jsonl"
    bench.write_text("\n".join(json.dumps({"question": q}) for q in [
        "Find the number of ordered pairs of positive integers whose product is exactly 2024.",
        "Short one."]))
    txt = tmp_path / "math500.txt"
    txt.write_text("Compute the sum of all primes below one hundred and give it modulo seven please.\n")
    deco = Decontaminator([BenchmarkSource(path=str(bench), column="question", name="aime"),
                           BenchmarkSource(path=str(txt))], n=8)
    assert deco.match("Hint: find the number of ordered pairs of positive integers whose product is 30.")[0] == "aime"
    assert deco.match("COMPUTE the sum of all primes below one hundred, and give it modulo 5.")[0] == str(txt)
    assert deco.match("Find the number of ordered triples of reals with product one.") is None
    assert deco.match("short one") == ("aime", "short one")  # shorter than n: exact word match only
    with pytest.raises(DistillkitError, match="no column 'problem'"):
        Decontaminator([BenchmarkSource(path=str(bench))], n=8)
    with pytest.raises(ValueError, match="exactly one of"):
        BenchmarkSource(path=str(bench), hub_dataset="HuggingFaceH4/aime_2024")


def test_selection_policies_and_pass_rate():
    recs = [make_record(prompt_id="a", sample_index=k, problem="a", completion_tokens=t)
            for k, t in enumerate([30, 10, 20, 40])]
    recs += [make_record(prompt_id="b", sample_index=0, problem="b", completion_tokens=5)]
    rates = pass_rates(recs, [True, True, True, False, True])
    assert rates == {"a": 0.75, "b": 1.0}
    cand = [0, 1, 2, 4]
    assert select(recs, cand, rates, SelectionConfig()) == {}
    assert {i: v.reason for i, v in select(recs, cand, rates, SelectionConfig(policy="max_k", k=2)).items()} == {2: "over_max_k"}
    assert {i: v.reason for i, v in select(recs, cand, rates, SelectionConfig(policy="shortest")).items()} == {0: "not_shortest", 2: "not_shortest"}
    got = select(recs, cand, rates, SelectionConfig(min_pass_rate=0.8))
    assert {i: v.reason for i, v in got.items()} == {0: "pass_rate_below_min", 1: "pass_rate_below_min", 2: "pass_rate_below_min"}
    got = select(recs, cand, rates, SelectionConfig(max_pass_rate=0.9))
    assert {i: v.reason for i, v in got.items()} == {4: "pass_rate_above_max"}


def _rated(rates: dict[str, float], n: int = 4):
    """Records of prompts with the given pass rates (n samples each, the first round(rate * n) passing)."""
    recs, passed = [], []
    for pid, rate in rates.items():
        for k in range(n):
            recs.append(make_record(prompt_id=pid, sample_index=k, problem=pid, completion_tokens=10 + k))
            passed.append(k < round(rate * n))
    return recs, passed


def test_difficulty_bins_keep_a_stable_share_of_each_bin():
    rates = {f"q{i:02d}": [0.25, 0.5, 0.75, 1.0][i % 4] for i in range(40)}  # ten prompts at each rate
    recs, passed = _rated(rates)
    cand = [i for i, ok in enumerate(passed) if ok]
    cfg = SelectionConfig(bins=[0, 0.5, 1], bin_shares=[1.0, 0.3], max_pass_rate=0.99)
    got = select(recs, cand, pass_rates(recs, passed), cfg)
    gone = {recs[i]["prompt_id"]: v for i, v in got.items()}
    # rate 1.0: outside the band; 0.25 in [0, 0.5): all kept; 0.5 and 0.75 in [0.5, 1]: 6 of 20 kept
    assert {p for p, v in gone.items() if v.reason == "pass_rate_above_max"} == {p for p, r in rates.items() if r == 1.0}
    binned = {p for p, v in gone.items() if v.reason == "bin_share"}
    assert len(binned) == 14 and all(rates[p] in (0.5, 0.75) for p in binned)
    assert gone[min(binned)].detail == "pass rate in [0.5, 1]: kept 6 of 20 prompts (share 0.3)"
    # a prompt's fate does not depend on record order, and is all-or-nothing
    order = list(reversed(range(len(recs))))
    again = select([recs[i] for i in order], [order.index(i) for i in cand], pass_rates(recs, passed), cfg)
    assert {recs[order[i]]["prompt_id"] for i, v in again.items() if v.reason == "bin_share"} == binned
    assert all(got.get(i) is not None for i in cand if recs[i]["prompt_id"] in binned)
    # another seed, another choice of the same size
    other = select(recs, cand, pass_rates(recs, passed), cfg.model_copy(update={"seed": 1}))
    other_binned = {recs[i]["prompt_id"] for i, v in other.items() if v.reason == "bin_share"}
    assert len(other_binned) == 14 and other_binned != binned
    # bins and the policy compose: of the kept prompts, max_k trims traces
    both = select(recs, cand, pass_rates(recs, passed), cfg.model_copy(update={"policy": "max_k", "k": 1}))
    assert {v.reason for v in both.values()} == {"pass_rate_above_max", "bin_share", "over_max_k"}
    from distillkit.filter.selection import rule_counts

    counts = rule_counts(recs, cand, both)
    assert counts["prompts_in"] == 40 and counts["prompts_out"] == 10 + 6
    assert counts["rules"]["bin_share"] == {"prompts": 14, "traces": sum(round(rates[p] * 4) for p in binned)}
    assert counts["rules"]["over_max_k"]["prompts"] == 0


@pytest.mark.parametrize("selection, message", [
    ({"min_pass_rate": 0.8, "max_pass_rate": 0.5}, "min_pass_rate 0.8 > max_pass_rate 0.5"),
    ({"max_pass_rate": 0}, "filter.selection.max_pass_rate=0: Input should be greater than 0"),
    ({"min_pass_rate": 1.5}, "filter.selection.min_pass_rate=1.5: Input should be less than or equal to 1"),
    ({"bins": [0, 0.5, 1]}, "set both `bins`"),
    ({"bins": [0, 0.6, 0.5, 1], "bin_shares": [1, 1, 1]}, "edges must rise strictly from 0 to 1"),
    ({"bins": [0.1, 1], "bin_shares": [1]}, "edges must rise strictly from 0 to 1"),
    ({"bins": [0, 0.5, 1], "bin_shares": [1]}, "bin_shares has 1 values for 2 bins"),
    ({"bins": [0, 0.5, 1], "bin_shares": [1, 1.2]}, "every share is a fraction in [0, 1]"),
    ({"bins": [0, 0.5, 1], "bin_shares": [0, 1], "max_pass_rate": 0.4}, "keep no prompt inside the band"),
])
def test_selection_config_errors_name_the_key(selection, message):
    from distillkit.config import validate_recipe
    from distillkit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate_recipe({"filter": {"selection": selection}})
    text = "\n".join(info.value.problems)
    assert "filter.selection" in text and message in text, text


def _sample(pid, k, body, answer, gold, source="arith", tokens=10, finish="stop", close=True):
    completion = body + ("\n</think>\n" + answer if close else "")
    reasoning, response, closed = split_reasoning(completion, "<think>\n")
    return make_record(prompt_id=pid, sample_index=k, source=source, problem=f"Problem {pid}?", gold_answer=gold,
                       prefill="<think>\n", completion=completion, reasoning=reasoning, response=response,
                       reasoning_closed=closed, completion_tokens=tokens, finish_reason=finish)


@pytest.fixture
def run_cfg(tmp_path):
    recs = [
        _sample("p1", 0, "Two plus two makes four.", "\\boxed{4}", "4"),
        _sample("p1", 1, "Two plus two makes four.", "\\boxed{4}", "4"),                 # exact duplicate of #0
        _sample("p1", 2, "Two plus two makes five.", "\\boxed{5}", "4"),                 # wrong answer
        _sample("p1", 3, "Two plus two makes", "", "4", tokens=64, finish="length", close=False),  # truncated
        _sample("p2", 0, "Half of one is a half.", "\\boxed{0.5}", "1/2", tokens=20),
        _sample("p2", 1, "One over two.", "\\boxed{\\frac{1}{2}}", "1/2", tokens=12),     # shortest correct
        _sample("p2", 2, "It is a half.", "The answer is one half.", "1/2"),              # not boxed
        _sample("p2", 3, "The answer is a half. " * 40, "\\boxed{1/2}", "1/2", tokens=200),  # repetitive
        _sample("p3", 0, "Seven is eight.", "\\boxed{8}", "7", source="other"),
        _sample("p3", 1, "Seven is six.", "\\boxed{6}", "7", source="other"),
        _sample("p4", 0, "No gold here.", "\\boxed{3}", None, source="other"),            # cannot judge: kept by math
    ]
    cfg = RecipeConfig.model_validate({
        "name": "t", "output_dir": str(tmp_path / "run"),
        "filter": {"verifiers": [{"kind": "truncation"}, {"kind": "format"}, {"kind": "math", "timeout_s": 20},
                                 {"kind": "repetition"}],
                   "selection": {"policy": "shortest", "max_pass_rate": 0.99}, "num_workers": 1}})
    gen = StageOutput(cfg.stage_dir("generate"), "generate", stage_config_hash(cfg, "generate"))
    gen.begin()
    gen.write_shard(0, recs[:6], record_features())
    gen.write_shard(1, recs[6:], record_features())
    gen.finish(counts={"records": len(recs)})
    return cfg


def test_filter_stage_end_to_end(run_cfg):
    m = run_filter(run_cfg, show_progress=False)
    funnel = [(s["step"], s["in"], s["rejected"], s["out"]) for s in m.stats["funnel"]]
    assert funnel == [("input", 11, 0, 11), ("truncation", 11, 1, 10), ("format", 10, 1, 9),
                      ("math", 9, 3, 6), ("repetition", 6, 1, 5), ("dedup", 5, 1, 4), ("selection", 4, 2, 2)]
    assert m.stats["reasons"]["math"] == {"correct": 5, "no_boxed_answer": 2, "no_gold_answer": 1, "wrong_answer": 3}
    assert m.stats["reasons"]["format"] == {"answer_not_boxed": 1, "unclosed_reasoning": 1, "well_formed": 9}
    assert m.stats["reasons"]["selection"] == {"not_shortest": 1, "pass_rate_above_max": 1, "selected": 2}
    # the same verdicts by outcome: what the report and the CLI funnel list as rejections
    assert m.stats["outcomes"]["math"] == {"rejected": {"no_boxed_answer": 2, "wrong_answer": 3},
                                           "passed": {"correct": 5}, "cannot_judge": {"no_gold_answer": 1}}
    assert m.stats["outcomes"]["format"]["passed"] == {"well_formed": 9}
    # each rejected record counted once, at the step that rejected it first (as in the funnel)
    assert m.stats["sources"] == {
        "arith": {"records": 8, "passed_verifiers": 4, "pass_rate": 0.5, "kept": 2, "prompts": 2, "prompts_kept": 2,
                  "rejections": {"truncation": {"truncated_at_max_tokens": 1}, "format": {"answer_not_boxed": 1},
                                 "math": {"wrong_answer": 1}, "repetition": {"repeated_ngrams": 1},
                                 "dedup": {"exact_duplicate": 1}, "selection": {"not_shortest": 1}}},
        "other": {"records": 3, "passed_verifiers": 1, "pass_rate": 0.3333, "kept": 0, "prompts": 2, "prompts_kept": 0,
                  "rejections": {"math": {"wrong_answer": 2}, "selection": {"pass_rate_above_max": 1}}}}
    # one teacher (records without a teacher column value: "")
    assert list(m.stats["teachers"]) == [""] and m.stats["teachers"][""]["records"] == 11
    assert m.stats["teachers"][""]["sources"] == ["arith", "other"]
    assert m.counts["input"] == 11 and m.counts["kept"] == 2 and m.counts["rejected"] == 9

    out = run_cfg.stage_dir("filter")
    kept = read_records(out)
    assert sorted(kept["id"]) == ["p1#0", "p2#1"]
    rejected = {row["id"]: row for row in read_records(out / "rejected").to_list()}
    assert len(rejected) == 9
    # A rejected record carries every verifier's verdict, not only the first failure.
    truncated = {v["verifier"]: v["reason"] for v in rejected["p1#3"]["verdicts"]}
    assert truncated == {"truncation": "truncated_at_max_tokens", "format": "unclosed_reasoning",
                         "math": "no_boxed_answer", "repetition": "not_repetitive"}
    assert json.loads(rejected["p1#2"]["meta"])["filter_details"]["math"] == "'5' != '4'"
    assert rejected["p4#0"]["verdicts"][-1] == {"verifier": "selection", "passed": False, "reason": "pass_rate_above_max"}

    table = funnel_table(read_manifest(out))
    assert [c.header for c in table.columns][:4] == ["step", "in", "rejected", "out"]
    # what each selection rule removed, in prompts and traces: p4 (always solved) goes whole, p1 and p2 lose
    # traces to `shortest` but stay
    assert m.stats["selection"] == {"prompts_in": 3, "prompts_out": 2,
                                    "rules": {"not_shortest": {"prompts": 0, "traces": 1},
                                              "pass_rate_above_max": {"prompts": 1, "traces": 1}}}
    assert table.row_count == 7 + 1 + 1 + 2  # 7 steps, prompts after selection, prompts by pass rate, 2 sources
    prompts_row = [list(col.cells)[7] for col in table.columns]
    assert prompts_row[:5] == ["  prompts", "3", "1", "2", "pass_rate_above_max 1"]
    by_rate = [list(col.cells)[8] for col in table.columns]
    assert by_rate[0] == "prompts by teacher pass rate" and "never solved" in by_rate[5]
    # the pass rate of each record's prompt is a column of kept and rejected records alike
    everything = kept.to_list() + list(rejected.values())
    solved = {r["id"]: not any(v["passed"] is False for v in r["verdicts"] if v["verifier"] not in ("dedup", "selection"))
              for r in everything}
    for r in everything:
        mine = [x for x in everything if x["prompt_id"] == r["prompt_id"]]
        assert r["teacher_pass_rate"] == pytest.approx(sum(solved[x["id"]] for x in mine) / len(mine))
    assert {r["teacher_pass_rate"] for r in everything} > {0.0}  # some prompt solved, some not
    # Complete: a second call returns the same manifest without redoing the work.
    assert run_filter(run_cfg, show_progress=False).finished_at == m.finished_at


class NoSevens(Verifier):
    """A verifier the test below registers: rejects a completion that mentions seven."""

    name = "no_sevens"

    def __call__(self, record):
        seven = "seven" in record["completion"].lower()
        return Verdict(not seven, "mentions_seven" if seven else "no_seven")


def test_a_registered_verifier_is_a_valid_kind_and_runs_in_the_filter_stage(run_cfg, monkeypatch):
    monkeypatch.setitem(VERIFIERS, "no_sevens", f"{__name__}:NoSevens")  # the registration line
    cfg = run_cfg.model_copy(deep=True)
    cfg.filter.verifiers = [VerifierSpec(kind="no_sevens")]  # validated: the kind is known now
    m = run_filter(cfg, show_progress=False)
    assert [(s["step"], s["in"], s["rejected"], s["out"]) for s in m.stats["funnel"]][:2] == [
        ("input", 11, 0, 11), ("no_sevens", 11, 2, 9)]
    assert m.stats["reasons"]["no_sevens"] == {"mentions_seven": 2, "no_seven": 9}


def test_filter_stage_with_decontamination_and_early_stop(run_cfg, tmp_path):
    bench = tmp_path / "bench.txt"
    bench.write_text("Problem p2?\n")
    cfg = run_cfg.model_copy(deep=True)
    cfg.filter.decontaminate.enabled = True
    cfg.filter.decontaminate.ngram = 8
    cfg.filter.decontaminate.benchmarks = [BenchmarkSource(path=str(bench), name="bench")]
    cfg.filter.stop_at_first_rejection = True
    cfg.filter.selection = SelectionConfig()
    m = run_filter(cfg, overwrite=True, show_progress=False)
    funnel = [(s["step"], s["rejected"], s["out"]) for s in m.stats["funnel"]]
    assert funnel == [("input", 0, 11), ("decontaminate", 4, 7), ("truncation", 1, 6), ("format", 0, 6),
                      ("math", 3, 3), ("repetition", 0, 3), ("dedup", 1, 2), ("selection", 0, 2)]
    # With early stop, later verifiers never saw the rejected records.
    assert sum(m.stats["reasons"]["math"].values()) == 6


def test_filter_needs_finished_generate_output(tmp_path):
    cfg = RecipeConfig.model_validate({"name": "x", "output_dir": str(tmp_path / "none")})
    with pytest.raises(DistillkitError, match="run `distillkit generate` first"):
        run_filter(cfg, show_progress=False)


def test_a_selection_that_keeps_nothing_stops_before_training(run_cfg, capsys):
    """Zero kept prompts: `run` stops after the filter with the funnel in the error, `filter` prints the funnel
    and exits non-zero; training never starts on nothing."""
    from distillkit import cli
    from distillkit.pipeline import run_pipeline

    cfg = run_cfg.model_copy(deep=True)
    cfg.filter.selection = SelectionConfig(min_pass_rate=0.6, max_pass_rate=0.9)  # p1, p2 at 0.5; p4 at 1.0
    cfg.stages = ["filter", "train"]
    with pytest.raises(DistillkitError) as info:
        run_pipeline(cfg)
    text = str(info.value)
    assert "filter kept 0 of 11 records" in text and "filter.selection.min_pass_rate / max_pass_rate" in text
    assert "selection" in text and "pass_rate_below_min 3" in text  # the funnel's selection row
    assert "prompts" in text and "3 -> 0" in text
    assert not cfg.stage_dir("train").exists()
    # every trace rejected by the verifiers: the message points at them instead
    cfg.filter.selection = SelectionConfig()
    cfg.filter.verifiers = [VerifierSpec(kind="length", max_tokens=1)]
    with pytest.raises(DistillkitError, match=r"no trace passed the verifiers.*\(filter\.verifiers\)"):
        run_pipeline(cfg, overwrite=True)
    recipe = cfg.stage_dir("filter").parent / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    capsys.readouterr()
    with pytest.raises(DistillkitError, match="filter kept 0 of 11 records"):
        cli.filter_([str(recipe), "stages=[filter]"])
    assert "filter funnel" in capsys.readouterr().out


def test_worker_pool_starts_where_stderr_is_no_file(monkeypatch):
    """In a notebook sys.stderr has no file descriptor; the verifier workers used to fail to start there, and
    the filter then reported every shard as corrupt."""
    import io

    from distillkit.verify.workers import TimeoutPool

    monkeypatch.setattr("sys.stderr", io.StringIO())
    pool = TimeoutPool("operator:add", num_workers=1, timeout_s=30)
    try:
        assert [r.value for r in pool.map([(1, 2), (3, 4)])] == [3, 7]
    finally:
        pool.close()
