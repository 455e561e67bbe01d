"""On-policy distillation on the quickstart: a live teacher vs a served one (loopback vLLM server), same model.

Both runs train the quickstart's 24-layer student on its kept prompts with `train.on_policy.enabled`
(the student samples up to 96 tokens, reverse KL per token, TRL's DistillationTrainer), then evaluate it
on the quickstart's 60 held-out problems (k=2). The teacher is the real SmolLM2-135M-Instruct:
  - live: loaded beside the student (transformers), full-vocabulary reverse KL (TRL's loss)
  - served: a vLLM server distillkit starts (`teacher_server.openai.serve: true`), top-20 + tail reverse
    KL (distillkit's chunked loss), micro-batches scored while the student trains
Prints per run: seconds per optimizer step (TRL's step_time), the teacher's share of it (served: time
the student waited for the server), held-out pass@1 +- se; and the SFT+KD student of the same data
(`--reference`, an evaluate folder of the quickstart) for comparison.

Run (CPU, ~25 minutes on 2 cores; reuses the quickstart's generate and filter output when --data is given):
    .venv/bin/python bench/bench_on_policy.py --data runs/quickstart --reference runs/quickstart/evaluate
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASK = "distillkit_arith"


def score(folder, model="student_after") -> dict | None:
    from distillkit.schemas.evaluate import EvalResults

    results = EvalResults.read(folder)
    s = results.score(model, TASK) if results else None
    return None if s is None else {"pass_at_1": round(100 * s.pass_at_1, 1),
                                   "stderr": round(100 * s.stderr, 1) if s.stderr is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a quickstart run folder whose generate/ and filter/ are reused")
    ap.add_argument("--reference", help="evaluate folder of the SFT+KD quickstart student on the same data")
    ap.add_argument("--modes", default="live,served")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    from transformers import TrainerCallback

    from distillkit.config import load_recipe
    from distillkit.evaluate.stage import run_evaluate
    from distillkit.pipeline import run_pipeline
    from distillkit.train.stage import run_train

    class Logs(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_log(self, a, state, control, logs=None, **kw):
            self.rows.append(dict(logs or {}))

    root = tempfile.mkdtemp(prefix="bench-on-policy-")
    out = {"reference_sft_kd": score(args.reference) if args.reference else None}
    for mode in args.modes.split(","):
        overrides = [f"output_dir={root}/{mode}", "train.on_policy.enabled=true",
                     f"train.on_policy.max_new_tokens={args.max_new_tokens}", f"train.num_train_epochs={args.epochs}",
                     "train.kd.divergence=reverse_kl", f"train.kd.teacher_probs={mode}",
                     "evaluate.models=[student_after]"]
        if mode == "served":
            overrides += ["train.kd.teacher_server.openai.serve=true", "train.kd.teacher_server.topk=20"]
        cfg = load_recipe("quickstart", overrides)
        if args.data:
            for stage in ("generate", "filter"):
                shutil.copytree(os.path.join(args.data, stage), cfg.stage_dir(stage), dirs_exist_ok=True)
        run_pipeline(cfg.model_copy(update={"stages": ["generate", "filter"]}))
        logs = Logs()
        t0 = time.perf_counter()
        m = run_train(cfg, callbacks=[logs])
        train_s = time.perf_counter() - t0
        run_evaluate(cfg)
        steps = [r["step_time"] for r in logs.rows if "step_time" in r]
        waits = [r["teacher_wait_s"] for r in logs.rows if r.get("teacher_wait_s") is not None]
        kls = [r["kl"] for r in logs.rows if r.get("kl") is not None]
        out[mode] = {
            "global_steps": m.stats["global_steps"], "train_s_incl_start": round(train_s, 1),
            "s_per_step": round(statistics.median(steps), 2) if steps else None,
            "teacher_wait_s_per_micro_batch": round(statistics.median(waits), 3) if waits else None,
            "kl_first_last": [round(kls[0], 3), round(kls[-1], 3)] if kls else None,
            "held_out": score(cfg.stage_dir("evaluate")),
        }
        print(mode, json.dumps(out[mode]), flush=True)
    if "live" in out and "served" in out and out["live"]["s_per_step"] and out["served"]["s_per_step"]:
        out["served_vs_live_step_time"] = round(out["served"]["s_per_step"] / out["live"]["s_per_step"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
