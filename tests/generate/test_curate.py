"""Question curation in generate: the student's pre-screen and resampling until verified, with stand-in
engines whose answers are right exactly where the test says (by request seed), so every count is known."""

from __future__ import annotations

import json

import pytest

from distillkit.config import validate_recipe
from distillkit.engines.base import PromptResult, Sample, prompt_seed
from distillkit.errors import ConfigError, DistillkitError
from distillkit.generate.prompts import load_prompts
from distillkit.generate.stage import run_generate
from distillkit.records import read_manifest, read_records


class Scripted:
    """A Backend whose sample i of a request is right when `right(prompt_id, seed, i)` says so."""

    name, logprobs_mode, tokenizer = "scripted", "raw_logprobs", None
    skips_special_tokens = True

    def __init__(self, model_id, gold, right):
        self.model_id, self.gold, self.right = model_id, gold, right
        self.requests = []

    def generate(self, requests, sampling):
        self.requests += requests
        out = []
        for r in requests:
            samples = []
            for i in range(sampling.n):
                answer = self.gold[r.prompt_id] if self.right(r.prompt_id, r.seed, i) else "-1"
                text = f"We add the numbers. The answer is \\boxed{{{answer}}}."
                samples.append(Sample(text=text, token_ids=list(range(10 + i)), finish_reason="stop"))
            out.append(PromptResult(prompt_tokens=5, samples=samples))
        return out

    def close(self):
        pass


def make_cfg(tmp_path, **generate):
    return validate_recipe({
        "name": "t", "output_dir": str(tmp_path / "run"),
        "generate": {"prompts": {"builtin": "arith", "builtin_args": {"num": 8}, "prefill": None},
                     "sampling": {"n": 2, "max_tokens": 64, "seed": 0}, "shard_size": 3, **generate},
        "filter": {"verifiers": [{"kind": "truncation", "require_closed_reasoning": False}, {"kind": "math"}]}})


def prompts_of(cfg):
    return load_prompts(cfg.generate.prompts, seed=cfg.seed).prompts


def test_resampling_until_verified_counts_rounds_and_stops_early(tmp_path):
    cfg = make_cfg(tmp_path, resample={"rounds": 2})
    ps = prompts_of(cfg)
    gold = {p.prompt_id: p.answer for p in ps}
    ids = [p.prompt_id for p in ps]
    # the round whose first sample is right, per prompt: 0 for most, 1 and 2 for two, never for one
    first_right = {pid: 0 for pid in ids} | {ids[1]: 1, ids[4]: 2, ids[6]: None}

    def seed_of(pid, r):
        return prompt_seed(0, pid + (f"#round{r}" if r else ""))

    right_seeds = {seed_of(pid, r) for pid, r in first_right.items() if r is not None}
    teacher = Scripted("teacher", gold, lambda pid, seed, i: seed in right_seeds and i == 0)
    m = run_generate(cfg, backend=teacher)

    recs = read_records(cfg.stage_dir("generate")).to_list()
    rounds_of = {pid: 1 + (first_right[pid] if first_right[pid] is not None else 2) for pid in ids}
    for pid in ids:  # n samples per round, indices continuing, records of a prompt together
        mine = [r for r in recs if r["prompt_id"] == pid]
        assert [r["sample_index"] for r in mine] == list(range(2 * rounds_of[pid]))
        metas = [json.loads(r["meta"]) for r in mine]
        assert [x["round"] for x in metas] == [k // 2 for k in range(2 * rounds_of[pid])]
        assert [x["verified"] for x in metas] == [("\\boxed{" + gold[pid] + "}") in r["completion"] for r in mine]
    # each round asked only for the prompts still unverified, with new seeds
    asked = [(r.prompt_id, r.seed) for r in teacher.requests]
    assert len(asked) == len(set(asked)) == sum(rounds_of.values())
    assert {pid for pid, seed in asked if seed == seed_of(pid, 2)} == {ids[4], ids[6]}
    assert m.stats["resample"] == {
        "rounds": 2, "prompts": 8, "verified": 7, "never_verified": 1,
        # round 0: all 8, 5 right at once; round 1: the other 3, one right; round 2: the last 2, one right
        "per_round": [{"round": 0, "prompts": 8, "verified": 5, "samples": 16, "tokens": 8 * (10 + 11)},
                      {"round": 1, "prompts": 3, "verified": 1, "samples": 6, "tokens": 3 * (10 + 11)},
                      {"round": 2, "prompts": 2, "verified": 1, "samples": 4, "tokens": 2 * (10 + 11)}]}
    assert m.counts["samples"] == 26 and m.counts["prompts"] == 8

    # resumable: drop one committed shard and the manifest, rerun: the same records, only that shard redone
    shard = sorted(cfg.stage_dir("generate").glob("shard-*.parquet"))[1]
    shard.unlink()
    (cfg.stage_dir("generate") / "manifest.json").unlink()
    again = Scripted("teacher", gold, teacher.right)
    m2 = run_generate(cfg, backend=again)
    assert {r.prompt_id for r in again.requests} == set(ids[3:6])
    assert read_records(cfg.stage_dir("generate")).to_list() == recs and m2.stats["resample"] == m.stats["resample"]


def test_prescreen_drops_what_the_student_solves_and_keeps_a_share(tmp_path):
    cfg = make_cfg(tmp_path, prescreen={"enabled": True, "samples": 4, "solved_at": 0.75, "keep_share": 0.5})
    ps = prompts_of(cfg)
    gold = {p.prompt_id: p.answer for p in ps}
    ids = [p.prompt_id for p in ps]
    solves = dict(zip(ids, [4, 3, 2, 0, 4, 4, 1, 3]))  # right answers of 4: solved (>= 3) for 0, 1, 4, 5, 7
    student = Scripted("student", gold, lambda pid, seed, i: i < solves[pid])
    teacher = Scripted("teacher", gold, lambda pid, seed, i: True)
    m = run_generate(cfg, backend=teacher, student=student)

    assert all(r.seed == prompt_seed(0, r.prompt_id + "#prescreen") for r in student.requests)
    assert sorted(r.prompt_id for r in student.requests) == sorted(ids)
    screen = json.loads((cfg.stage_dir("generate") / "prescreen.json").read_text())
    assert {pid: row["correct"] for pid, row in screen["prompts"].items()} == solves
    solved = {pid for pid, c in solves.items() if c >= 3}
    kept_solved = {pid for pid in solved if screen["prompts"][pid]["kept"]}
    assert len(kept_solved) == 3  # round(0.5 * 5), the half rounded up
    sampled = {r.prompt_id for r in teacher.requests}
    assert sampled == (set(ids) - solved) | kept_solved
    assert {r["prompt_id"] for r in read_records(cfg.stage_dir("generate")).to_list()} == sampled
    st = m.stats["prescreen"]
    assert (st["prompts"], st["solved"], st["dropped"], st["kept"]) == (8, 5, 2, 6)
    assert st["histogram"] == {"0": 1, "0.25": 1, "0.5": 1, "0.75": 2, "1": 3} and st["model"] == "student"
    assert m.counts["prompts"] == 6 and m.counts["prompts_screened_out"] == 2

    # a resumed run reuses the screen: the student is not asked again
    (cfg.stage_dir("generate") / "manifest.json").unlink()
    for shard in sorted(cfg.stage_dir("generate").glob("shard-*.parquet"))[1:]:
        shard.unlink()
    never = Scripted("student", gold, lambda *a: pytest.fail("the student was asked again"))
    assert run_generate(cfg, backend=teacher, student=never).counts["prompts"] == 6

    # a student that solves all, with keep_share 0, leaves the teacher nothing: a clear error
    everything = Scripted("student", gold, lambda *a: True)
    cfg0 = make_cfg(tmp_path / "b", prescreen={"enabled": True, "samples": 2})
    with pytest.raises(DistillkitError, match="the student solves all 8 prompts.*solved_at"):
        run_generate(cfg0, backend=teacher, student=everything)


def test_curation_config_errors_and_hashes(tmp_path):
    from distillkit.pipeline import stage_config_hash

    with pytest.raises(ConfigError, match="identical answers"):
        validate_recipe({"generate": {"prescreen": {"enabled": True, "temperature": 0}}})
    with pytest.raises(ConfigError, match=r"generate.prescreen.keep_share=1"):
        validate_recipe({"generate": {"prescreen": {"keep_share": 1}}})
    cfg = make_cfg(tmp_path)
    base = stage_config_hash(cfg, "generate")
    # off, the new keys leave existing runs' hashes alone; on, the verifiers that decide are part of the hash
    on = make_cfg(tmp_path, resample={"rounds": 1})
    assert stage_config_hash(on, "generate") != base
    stricter = on.model_copy(deep=True)
    stricter.filter.verifiers[1].fallbacks = ["answer_is"]
    assert stage_config_hash(stricter, "generate") != stage_config_hash(on, "generate")
    cfg.filter.verifiers[1].fallbacks = ["answer_is"]
    assert stage_config_hash(cfg, "generate") == base
    # a pre-screen needs a verifier that says whether an answer is right: refused when the recipe loads
    with pytest.raises(ConfigError, match="correctness verifiers of filter.verifiers"):
        validate_recipe({"generate": {"prescreen": {"enabled": True}}, "filter": {"verifiers": [{"kind": "length"}]}})
