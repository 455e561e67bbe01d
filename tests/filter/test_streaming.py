"""The streaming filter against the in-memory filter it replaced, and across executors."""

import gzip
import json
from pathlib import Path

import pytest

from distillkit.filter.stage import run_filter
from distillkit.records import iter_records

from .streaming_case import case_config, write_case_input

EXPECTED = Path(__file__).parent / "data" / "streaming_expected.json.gz"


def comparable(record):
    """The old filter named the shared n-gram it met first in a set (an order that changes from process to
    process) and the benchmark by its temporary path: a contaminated record's detail is compared by presence."""
    if "decontaminate" in record["details"]:
        record["details"]["decontaminate"] = "(present)"
    return record


def outputs(cfg):
    out = cfg.stage_dir("filter")
    got = {}
    for folder, kept in ((out, True), (out / "rejected", False)):
        for r in iter_records(folder, columns=["id", "verdicts", "meta"]):
            got[r["id"]] = {"kept": kept, "verdicts": [[v["verifier"], v["passed"], v["reason"]] for v in r["verdicts"]],
                            "details": json.loads(r["meta"]).get("filter_details", {})}
    return {i: comparable(r) for i, r in got.items()}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cfg = case_config(tmp_path_factory.mktemp("streaming"))
    write_case_input(cfg)
    return cfg


def test_same_output_as_the_in_memory_filter(case):
    expected = json.loads(gzip.open(EXPECTED, "rt").read())
    m = run_filter(case, show_progress=False)
    # keys the old filter did not write (warnings, the per-source rejections) are checked for themselves, the rest
    # must be equal
    sources = {src: {k: v for k, v in s.items() if k != "rejections"} for src, s in m.stats["sources"].items()}
    assert {k: m.stats[k] for k in expected["stats"]} | {"sources": sources} == expected["stats"]
    assert set(m.stats) - set(expected["stats"]) == {"warnings", "pass_rates", "selection", "teachers"}
    assert m.stats["warnings"] == []
    # the rejections per source and per teacher add up to the records each rejected
    for group in (*m.stats["sources"].values(), *m.stats["teachers"].values()):
        assert sum(sum(r.values()) for r in group["rejections"].values()) == group["records"] - group["kept"]
    # the selection's per-rule counts agree with its funnel step and the kept prompts
    sel, step = m.stats["selection"], m.stats["funnel"][-1]
    assert step["step"] == "selection" and sum(c["traces"] for c in sel["rules"].values()) == step["rejected"]
    assert sel["prompts_out"] == m.counts["prompts_kept"] and sel["rules"]["over_max_k"]["prompts"] == 0
    assert {"pass_rate_below_min", "pass_rate_above_max"} <= set(sel["rules"])
    assert m.counts == expected["counts"]
    got = outputs(case)
    assert got.keys() == expected["records"].keys()
    want = {i: comparable(r) for i, r in expected["records"].items()}
    diff = [i for i in got if got[i] != want[i]]
    assert not diff, (diff[:3], [got[i] for i in diff[:3]], [want[i] for i in diff[:3]])


def test_pass_rate_per_prompt_in_the_manifest_and_on_every_record(case):
    """The teacher's pass rate of each prompt (verifier passes over its samples): a histogram in the manifest
    and a `teacher_pass_rate` column on kept and rejected records, recomputed here from the verdicts."""
    from collections import defaultdict

    m = run_filter(case, show_progress=False)
    out = case.stage_dir("filter")
    rows = [r for folder in (out, out / "rejected")
            for r in iter_records(folder, columns=["prompt_id", "verdicts", "teacher_pass_rate"])]
    solved, samples = defaultdict(int), defaultdict(int)
    for r in rows:
        verifier_fails = [v for v in r["verdicts"] if v["verifier"] not in ("decontaminate", "dedup", "selection")
                          and v["passed"] is False]
        solved[r["prompt_id"]] += not verifier_fails
        samples[r["prompt_id"]] += 1
    for r in rows:
        assert r["teacher_pass_rate"] == pytest.approx(solved[r["prompt_id"]] / samples[r["prompt_id"]])
    rates = [solved[p] / samples[p] for p in samples]
    stats = m.stats["pass_rates"]
    assert stats["prompts"] == len(samples) == sum(stats["histogram"].values())
    assert stats["never"] == rates.count(0.0) and stats["always"] == rates.count(1.0)
    assert stats["mean"] == pytest.approx(sum(rates) / len(rates), abs=1e-4)
    assert 0 < stats["always"] < len(samples)  # the synthetic teacher solves some prompts and misses others


def run_on(case, root: Path, **executor) -> "RecipeConfig":
    """The case's config in a new run folder sharing the case's generate output."""
    from distillkit.config import RecipeConfig

    data = case.model_dump(mode="json")
    data["output_dir"] = str(root / "run")
    data["filter"]["executor"] = executor
    cfg = RecipeConfig.model_validate(data)
    cfg.stage_dir("generate").parent.mkdir(parents=True, exist_ok=True)
    cfg.stage_dir("generate").symlink_to(case.stage_dir("generate"))
    return cfg


def test_datatrove_local_executor_gives_the_same_output(case, tmp_path):
    inline = run_filter(case, show_progress=False)
    cfg = run_on(case, tmp_path, kind="local", workers=2)
    m = run_filter(cfg, show_progress=False)
    assert m.stats == inline.stats and m.counts == inline.counts
    assert m.config_hash == inline.config_hash  # the executor is not part of the stage's config
    assert outputs(cfg) == outputs(case)
    assert not (cfg.stage_dir("filter") / ".work").exists()  # judged files go once the stage is complete


def test_killed_run_resumes_without_redoing_finished_shards(case, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    import distillkit.filter.executors as executors
    from distillkit.records import count_records, read_manifest

    cfg = run_on(case, tmp_path)
    work = cfg.stage_dir("filter") / ".work"
    script = ("import json, sys\nfrom distillkit.config import RecipeConfig\nfrom distillkit.filter.stage import run_filter\n"
              "run_filter(RecipeConfig.model_validate(json.loads(sys.argv[1])), show_progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(cfg.model_dump(mode="json"))])
    deadline = time.time() + 120
    while not (work / "judged-00001.parquet").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in work.glob("judged-*.parquet"))
    assert 2 <= len(done) < 10, done  # killed in the middle of verification
    assert read_manifest(cfg.stage_dir("filter")) is None

    verified = []
    real = executors.verify_shard
    monkeypatch.setattr(executors, "verify_shard", lambda src, k, *a, **kw: verified.append(k) or real(src, k, *a, **kw))
    m = run_filter(cfg, show_progress=False)
    assert sorted(verified) == [k for k in range(10) if f"judged-{k:05d}.parquet" not in done]
    assert outputs(cfg) == outputs(case)  # nothing lost, nothing twice
    assert count_records(cfg.stage_dir("filter")) + count_records(cfg.stage_dir("filter") / "rejected") == m.counts["input"]


def test_a_kill_while_writing_rewrites_only_unfinished_shards(tmp_path, monkeypatch):
    import distillkit.filter.stage as stage

    cfg = small_run(tmp_path / "killed")
    real, calls = stage.write_shard_outputs, []

    def dies_at_shard_2(source, k, *a, **kw):
        if k == 2:
            raise KeyboardInterrupt  # as a kill would, after shards 0-1 are written
        calls.append(k)
        return real(source, k, *a, **kw)

    monkeypatch.setattr(stage, "write_shard_outputs", dies_at_shard_2)
    with pytest.raises(KeyboardInterrupt):
        run_filter(cfg, show_progress=False)
    assert calls == [0, 1]
    calls.clear()
    monkeypatch.setattr(stage, "write_shard_outputs", lambda source, k, *a, **kw: calls.append(k) or real(source, k, *a, **kw))
    run_filter(cfg, show_progress=False)
    assert calls == [2, 3]
    whole = small_run(tmp_path / "whole")
    run_filter(whole, show_progress=False)
    assert outputs(cfg) == outputs(whole)


def small_run(root: Path, num: int = 240, shard_size: int = 60, **filter_cfg):
    from distillkit.config import RecipeConfig
    from distillkit.testing.traces import write_synthetic_run

    cfg = RecipeConfig.model_validate({"name": "small", "output_dir": str(root / "run"),
                                       "filter": {"num_workers": 1, **filter_cfg}})
    write_synthetic_run(cfg.stage_dir("generate"), num, shard_size=shard_size, samples=4, chars=600)
    return cfg


def test_a_corrupt_shard_is_named_and_the_others_are_kept(tmp_path, monkeypatch):
    import shutil

    import distillkit.filter.executors as executors
    from distillkit.errors import DistillkitError

    cfg = small_run(tmp_path)
    gen = cfg.stage_dir("generate")
    good = tmp_path / "good-shard.parquet"
    shutil.copy(gen / "shard-00002.parquet", good)
    data = good.read_bytes()
    (gen / "shard-00002.parquet").write_bytes(data[: len(data) // 2])  # a copy that stopped half-way
    with pytest.raises(DistillkitError) as e:
        run_filter(cfg, show_progress=False)
    msg = str(e.value)
    assert "shard-00002.parquet" in msg and "corrupt or truncated" in msg and "1 of 4 input shards" in msg
    assert "rerun `distillkit generate`" in msg
    work = cfg.stage_dir("filter") / ".work"
    assert sorted(p.name for p in work.glob("judged-*")) == [f"judged-0000{k}.parquet" for k in (0, 1, 3)]

    shutil.copy(good, gen / "shard-00002.parquet")  # the fix: a good copy
    verified = []
    real = executors.verify_shard
    monkeypatch.setattr(executors, "verify_shard", lambda src, k, *a, **kw: verified.append(k) or real(src, k, *a, **kw))
    m = run_filter(cfg, show_progress=False)
    assert verified == [2] and m.counts["input"] == 240


def test_missing_columns_get_verdicts_not_a_crash(tmp_path):
    import pyarrow.parquet as pq

    from distillkit.records import read_records

    cfg = small_run(tmp_path, num=8, shard_size=4)
    shard = cfg.stage_dir("generate") / "shard-00001.parquet"
    table = pq.read_table(shard)
    # An imported dataset without answers or finish reasons, one completion null
    table = table.drop(["gold_answer", "finish_reason", "response", "reasoning", "reasoning_closed"])
    completion = table.column("completion").to_pylist()
    completion[0] = None
    table = table.set_column(table.schema.get_field_index("completion"), "completion",
                             __import__("pyarrow").array(completion))
    pq.write_table(table, shard)
    m = run_filter(cfg, show_progress=False)
    rows = {r["id"]: {v["verifier"]: v["reason"] for v in r["verdicts"]}
            for folder in (cfg.stage_dir("filter"), cfg.stage_dir("filter") / "rejected")
            for r in read_records(folder).to_list()}
    assert len(rows) == m.counts["input"] == 8
    broken = [rows[f"synthetic-{p}#{k}"] for p in (1,) for k in range(4)]
    assert all(v["math"] == "no_gold_answer" for v in broken)
    assert broken[0]["truncation"] == "unclosed_reasoning" and broken[0]["language"] == "too_short_to_judge"
    # the reasoning split is made from the text when the columns are missing
    assert [b["format"] for b in broken[1:]] == ["well_formed"] * 3


def test_slurm_executor_submits_an_array_and_a_finishing_job(tmp_path, monkeypatch):
    """The sbatch scripts are captured instead of submitted; each array task and the finishing job are
    then run the way Slurm would run them (datatrove's pickled executor, SLURM_ARRAY_TASK_ID set)."""
    import os
    import subprocess
    import sys

    import datatrove.executor.slurm as dt_slurm

    from distillkit.records import read_manifest

    cfg = small_run(tmp_path, executor={"kind": "slurm", "workers": 2, "tasks": 2,
                                        "slurm": {"partition": "cpu", "time": "01:00:00", "cpus_per_task": 2}})
    submitted = []

    def fake_sbatch(script, job_id_retriever, *args):
        submitted.append((script, args))
        return str(1000 + len(submitted))

    monkeypatch.setattr(dt_slurm, "launch_slurm_job", fake_sbatch)
    assert run_filter(cfg, show_progress=False) is None  # submitted, not finished
    verify_script, verify_args = submitted[0]
    assert "#SBATCH --array=0-1%2" in verify_script and "#SBATCH --partition=cpu" in verify_script
    assert "launch_pickled_pipeline" in verify_script
    finish = [s for s, a in submitted if "distillkit-filter-finish" in s]
    assert finish and any("--dependency=afterok:1001" in x for s, a in submitted if s == finish[0] for x in a)

    work = cfg.stage_dir("filter") / ".work"
    fake_bin = tmp_path / "bin"  # `scontrol show hostnames`, as datatrove asks the node's Slurm
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text("#!/bin/sh\necho \"$3\"\n")
    (fake_bin / "scontrol").chmod(0o755)
    env = {**os.environ, "SLURM_NODELIST": "node1", "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    launch = [sys.executable, "-m", "datatrove.tools.launch_pickled_pipeline"]
    for task in range(2):
        subprocess.run([*launch, str(work / "datatrove" / "executor.pik")], check=True,
                       env={**env, "SLURM_ARRAY_TASK_ID": str(task)}, capture_output=True)
    assert len(list(work.glob("judged-*.parquet"))) == 4
    subprocess.run([*launch, str(work / "datatrove-finish" / "executor.pik")], check=True,
                   env={**env, "SLURM_ARRAY_TASK_ID": "0"}, capture_output=True)
    m = read_manifest(cfg.stage_dir("filter"))
    inline = run_filter(small_run(tmp_path / "inline"), show_progress=False)
    assert m is not None and m.stats == inline.stats and m.counts == inline.counts
