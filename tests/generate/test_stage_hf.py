"""The generate stage end to end on the transformers backend (tiny model): records, stats, resume, refusal."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distillkit.config import validate_recipe
from distillkit.errors import DistillkitError
from distillkit.generate.stage import run_generate
from distillkit.records import list_shards, read_manifest, read_records


def make_cfg(model, out, **generate):
    g = {"teacher": {"model": str(model), "backend": "transformers", "vllm": {"dtype": "float32"}},
         "prompts": {"builtin": "arith", "builtin_args": {"num": 6}},
         "sampling": {"n": 2, "max_tokens": 12, "topk_logprobs": 5, "seed": 7}, "shard_size": 2}
    for key, value in generate.items():
        g[key] = {**g[key], **value} if isinstance(value, dict) else value
    return validate_recipe({"name": "t", "output_dir": str(out), "generate": g})


def _rows(folder):
    return sorted(read_records(folder).to_list(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def hf_run(tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_run")
    cfg = make_cfg(tiny_qwen2, out)
    manifest = run_generate(cfg)
    return cfg, manifest, _rows(cfg.stage_dir("generate"))


def test_records_counts_and_manifest(hf_run):
    cfg, manifest, rows = hf_run
    assert len(rows) == 12 and len({r["prompt_id"] for r in rows}) == 6
    assert {r["id"] for r in rows} == {f"{r['prompt_id']}#{i}" for r in rows for i in (0, 1)}
    assert len(list_shards(cfg.stage_dir("generate"))) == 3
    for r in rows:
        assert r["completion_tokens"] == len(r["completion_ids"]) == len(r["topk_ids"]) == len(r["topk_logprobs"])
        assert all(len(row) == 5 for row in r["topk_ids"])
        assert r["finish_reason"] in ("stop", "length") and r["prefill"] == "<think>\n"
        assert r["gold_answer"] and r["source"] == "arith" and r["teacher"] == str(cfg.generate.teacher.model)
        assert json.loads(r["sampling"])["n"] == 2 and json.loads(r["meta"])["backend"] == "transformers"
    assert manifest.counts["prompts"] == 6 and manifest.counts["samples"] == 12 and manifest.counts["shards"] == 3
    s = manifest.stats
    lengths = sorted(r["completion_tokens"] for r in rows)
    assert s["tokens"] == sum(lengths) and s["completion_tokens"]["max"] == lengths[-1]
    assert s["truncated_fraction"] == round(sum(r["finish_reason"] == "length" for r in rows) / 12, 4)
    assert s["logprobs_mode"] == "raw_logprobs" and s["topk_logprobs"] == 5 and s["tokens_per_s"] > 0
    assert 0 < s["soft_label_bytes_per_token"] <= 5 * 6  # k=5: at most int32 + fp16 per entry


def test_soft_labels_equal_a_forward_pass(hf_run):
    """Stored top-k logprobs are the teacher's raw log-softmax at each generated position, up to the packed-v1
    quantization: this tiny random teacher's rows are flat (a top-5 mass of ~3%), so each logprob moves by up to
    ~0.12 (the top-k mass to ~7%, the shape to ~0.05) while KL, which weighs errors by probability, stays small."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.softlabels import kl_topk

    cfg, _, rows = hf_run
    path = cfg.generate.teacher.model
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for r in rows[:3]:
        prompt = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True) + r["prefill"]
        pids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pids + r["completion_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)[len(pids) - 1:-1]
        stored_ids = torch.tensor(r["topk_ids"], dtype=torch.long)
        stored = torch.tensor(r["topk_logprobs"], dtype=torch.float32)
        assert torch.allclose(lp.gather(1, stored_ids), stored, atol=0.15)
        assert kl_topk(lp.gather(1, stored_ids).numpy(), stored.numpy()).mean() < 1e-3
        # The stored ids are the top 5 (up to fp16 ties): the first is the argmax.
        assert (lp.gather(1, stored_ids[:, :1])[:, 0] - lp.max(-1).values).abs().max() < 1e-2
        assert tok.decode(r["completion_ids"][:-1] if r["finish_reason"] == "stop" else r["completion_ids"]) \
            == r["completion"]


def test_rerun_is_a_no_op_and_a_changed_config_refuses_to_mix(hf_run, tiny_qwen2):
    cfg, manifest, rows = hf_run
    again = run_generate(cfg)
    assert again.finished_at == manifest.finished_at
    changed = make_cfg(tiny_qwen2, cfg.output_dir, sampling={"max_tokens": 13})
    with pytest.raises(DistillkitError) as e:
        run_generate(changed)
    assert "different config" in str(e.value) and "--overwrite" in str(e.value)
    assert _rows(cfg.stage_dir("generate")) == rows  # untouched


def test_bad_rows_are_counted_in_the_manifest(tiny_qwen2, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "What is 2 plus 2?"}\n{"problem": 3}\n{"problem": "What is 2 plus 2?"}\n')
    cfg = make_cfg(tiny_qwen2, tmp_path / "run", prompts={"builtin": None, "path": str(path)},
                   sampling={"n": 1, "max_tokens": 4, "topk_logprobs": 0})
    m = run_generate(cfg)
    assert m.counts["rows_read"] == 3 and m.counts["bad_rows"] == 1 and m.counts["duplicates"] == 1
    assert m.counts["samples"] == 1 and m.stats["bad_rows"] == [f"{path}: row 2: column 'problem' must be a "
                                                                "string, got int"]
    assert m.stats["soft_label_bytes_per_token"] is None
    assert "topk_ids" not in read_records(cfg.stage_dir("generate")).column_names


def test_unreachable_endpoint_is_one_clear_error(tiny_qwen2, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_cfg(tiny_qwen2, tmp_path, teacher={"backend": "openai",
                                                   "openai": {"base_url": f"http://127.0.0.1:{port}/v1"}})
    with pytest.raises(DistillkitError) as e:
        run_generate(cfg)
    assert str(e.value).startswith(f"cannot reach the teacher endpoint http://127.0.0.1:{port}/v1")
    assert "generate.teacher.openai.base_url" in str(e.value)


def test_missing_model_is_one_clear_error(tmp_path):
    cfg = make_cfg(tmp_path / "no_model_here", tmp_path / "run")
    with pytest.raises(DistillkitError, match="no such folder or file"):
        run_generate(cfg)


# ----------------------------------------------------------------------------------------- SIGKILL

RUNNER = """
import sys
from distillkit.config import RecipeConfig
from distillkit.generate.stage import run_generate
run_generate(RecipeConfig.model_validate_json(open(sys.argv[1]).read()))
"""


def test_resume_after_sigkill_at_random_points_equals_an_uninterrupted_run(tiny_qwen2, tmp_path):
    num = 8
    gen = {"prompts": {"builtin_args": {"num": num}}, "shard_size": 1}
    reference = make_cfg(tiny_qwen2, tmp_path / "ref", **gen)
    t0 = time.time()
    run_generate(reference)
    shard_seconds = (time.time() - t0) / num
    expected = _rows(reference.stage_dir("generate"))

    cfg = make_cfg(tiny_qwen2, tmp_path / "killed", **gen)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.model_dump_json())
    folder = cfg.stage_dir("generate")
    rng = random.Random(0)
    # Kill points: while the first process loads (nothing committed yet), then at random moments
    # inside later shards (after `target` shards are committed, plus a random part of one shard).
    targets = [0, *sorted(rng.sample(range(1, num - 1), 2))]
    committed_at_kill = []
    for target in targets:
        # the run at a lower priority than this watcher: on a loaded machine the watcher once woke only after
        # the run had committed every shard ([0, 8, 8]), and no kill landed mid-run
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(cfg_file)], preexec_fn=lambda: os.nice(10),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(list_shards(folder)) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, shard_seconds))
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed_at_kill.append(len(list_shards(folder)))
    assert committed_at_kill[0] < num and any(0 < c < num for c in committed_at_kill), committed_at_kill
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(cfg_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = _rows(folder)
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert got == expected  # every column: text, token ids, soft labels, seeds
    m = read_manifest(folder)
    assert m.counts["samples"] == 2 * num and m.counts["shards_resumed"] == committed_at_kill[-1]
    assert not list(Path(folder).glob(".tmp-*"))


def test_data_parallel_replicas_get_disjoint_gpus(monkeypatch):
    from distillkit.generate.stage import _replica_devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [_replica_devices(r, 2) for r in (0, 1)] == ["4,5", "6,7"]
    with pytest.raises(DistillkitError, match="lower data_parallel_size"):
        _replica_devices(2, 2)
