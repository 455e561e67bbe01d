"""bench/bench_plan_memory.py: it asks the planner what `distillkit plan` asks, and its CPU peak agrees with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillkit.plan import plan_recipe
from distillkit.testing import load_file_module

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_plan_memory.py"


def _bench():
    return load_file_module(SCRIPT, "bench_plan_memory")


@pytest.mark.parametrize("shape,method", [("qwen2.5-math-1.5b", "lora"), ("qwen2.5-math-7b", "qlora")])
def test_planned_figure_is_what_distillkit_plan_prints(shape, method):
    bench = _bench()
    cfg = bench.make_recipe(shape, layers=28, seq=16384, method=method, steps=3, lora_r=16, chunk_size=256, bf16=None)
    train = plan_recipe(cfg).train  # the `distillkit plan` entry point, rounded to 0.01 GiB
    gpu = bench.planned_memory(cfg, on_gpu=True)
    assert gpu["planned_gib"] == pytest.approx(train["total"], abs=0.01)
    assert gpu["planned_at_run_gib"] == pytest.approx(gpu["planned_gib"])  # no dtype given: plan.py's own
    # On CPU the GPU-only overhead (1 GiB CUDA context + 8% slack) is left out, and only it.
    cpu = bench.planned_memory(cfg, on_gpu=False)
    assert cpu["planned_gib"] == pytest.approx(train["total"] - train["overhead"], abs=0.02)


def test_planned_at_run_rescales_weights_and_activations_only():
    bench = _bench()
    cfg = bench.make_recipe("qwen2.5-math-1.5b", layers=2, seq=1024, method="lora", steps=3, lora_r=16,
                            chunk_size=256, bf16=None)
    plan = bench.planned_memory(cfg, on_gpu=False, base_bytes=4, act_bytes=4)
    c, run = plan["plan_components_gib"], plan["plan_at_run_components_gib"]
    assert run["weights"] == pytest.approx(2 * c["weights"])
    assert run["activations"] == pytest.approx(2 * c["activations"])
    assert run["logits"] == c["logits"] and run["trainable_states"] == c["trainable_states"]
    assert plan["planned_at_run_gib"] == pytest.approx(sum(run.values()))


@pytest.mark.slow
def test_cpu_peak_of_real_shape_matches_the_plan(tmp_path):
    """One decoder layer of the real 1.5B shape (vocab 151,936, hidden 1,536), 256 tokens, fp32 LoRA + chunked
    KD: ~1 min on the idle 2-core box, 2 under load (importing TRL and the (256, V) head matmuls dominate),
    ~2 GiB peak. The real hidden size and vocabulary keep the terms in the proportions of the real model."""
    out = tmp_path / "rows.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU comparison, even on a GPU machine
    run = subprocess.run([sys.executable, str(SCRIPT), "--layers", "1", "--seq", "256", "--steps", "2",
                          "--json", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["device"] == "cpu" and row["overhead_excluded"]
    assert row["measured_gib"] > 0 and row["planned_gib"] > 0
    assert row["ratio"] == pytest.approx(row["measured_gib"] / row["planned_gib"])
    assert row["trainable_params"] == row["plan_trainable_params"]  # the planner's LoRA count is exact
    # The trainer loads the frozen base in bf16 where the CPU computes in bf16 (AVX512-BF16/AMX), else in fp32.
    from distillkit.hardware import cpu_has_fast_bf16

    assert row["base_dtype"] == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    if row["base_dtype"] == "float32":
        # An AVX2 CPU runs fp32: the frozen base (0.97 GiB of the ~1.1 GiB steady state) is twice plan.py's bf16
        # figure, so the plan as printed undershoots (measured 1.62x there).
        assert row["ratio"] > 1.3
    else:  # plan.py's own assumption (a bf16 base): the printed plan is the plan at the run's element sizes
        assert row["ratio"] == pytest.approx(row["ratio_at_run"], rel=0.02)
    # At the run's element sizes the formula holds: measured 1.10x in fp32 (2026-12-01). Above 1 by ~0.06 GiB of
    # process-side state (dataset, trainer) and ~0.1 GiB because the chunked loss holds ~4.8 fp32 (chunk, V)
    # buffers where plan.py counts 4 (16 bytes/token/vocab). The band leaves room for that, not for a missed
    # term: without the (chunk, V) term the ratio would read ~1.7, with an extra fp32 copy of the tied
    # embedding/head ~1.6, and a plan counting the fp32 base at 2 bytes reads 1.62 (`ratio`).
    assert 0.9 < row["ratio_at_run"] < 1.3
    # The steady state (weights + adapter states) is the planned one within the process-side slack.
    run_plan = row["plan_at_run_components_gib"]
    assert row["measured_steady_gib"] == pytest.approx(run_plan["weights"] + run_plan["trainable_states"], abs=0.15)
