"""Training memory: the measured peak of LoRA + chunked-KD training steps vs `distillkit plan`'s estimate.

Run on a GPU (the real check: full depth, 16k tokens, bf16 autocast, one H200 holds both shapes):

    python bench/bench_plan_memory.py --shape qwen2.5-math-1.5b qwen2.5-math-7b --seq 16384 --json plan_gpu.json
    python bench/bench_plan_memory.py --shape qwen2.5-math-7b --seq 16384 --base-dtype bfloat16   # plan.py's bf16 base

Run on CPU (the same code path at a size a 2-core box finishes in 3-5 minutes, fp32 as the trainer runs on a
CPU without AVX512-BF16; `--method qlora` works with bitsandbytes' CPU backend but is ~3x slower):

    .venv/bin/python bench/bench_plan_memory.py --layers 2 --seq 1024 --json /tmp/plan_cpu.json

What runs. Each variant (shape x method) runs in a fresh subprocess, so peaks never mix. The subprocess
writes a RANDOM-WEIGHT student of the real shape (`--layers` keeps the first N decoder layers, like
`train.student.keep_layers: first:N`) as a `student_init/` folder, then goes through the train stage's
own code: `load_student` (LoRA: frozen base + PEFT adapters on all linear layers; QLoRA: bitsandbytes
4-bit when installed), `sft_config` and `build_trainer` (DistillTrainer with the chunked top-k KD loss,
gradient checkpointing, AdamW), on one packed row of `--seq` tokens with top-20 soft labels on every
token. Batch 1, `--steps` optimizer steps; the first is a warm-up (it allocates the AdamW states) and
the peak is taken over the others.

The columns (GiB = 2^30 bytes):
  base         dtype of the unquantized base weights in the run (QLoRA: its embeddings and head).
  measured     CUDA: peak of torch's reserved memory over the measured steps plus the memory on the
               device that torch does not manage (CUDA context, kernels), i.e. what nvidia-smi would
               show at the peak; `measured_allocated_gib` (torch.cuda.max_memory_allocated) is in the JSON.
               CPU: resident-set high-water mark (VmHWM, reset after the warm-up step) minus the RSS
               just before the student is loaded (Python, torch and the libraries are not counted).
  planned      plan.py's `estimate_training` for the same shape (layers included), method, LoRA rank,
               sequence length, batch 1, KD chunk size and gradient checkpointing: the figure
               `distillkit plan` prints for such a recipe. On CPU its GPU-only constants are left out:
               the 1 GiB CUDA context and the 8% allocator slack (`overhead`), since the CPU allocator
               hands large tensors back to the OS (MALLOC_MMAP_THRESHOLD_ is pinned in the subprocess).
  ratio        measured / planned.
  planned@run  the same formula with this run's element sizes where they differ from plan.py's bf16
               assumption: the unquantized base weights at the size the train stage gives them (LoRA:
               bf16 when training in bf16, else float32; QLoRA: the embeddings and head,
               which PEFT's prepare_model_for_kbit_training casts to fp32; `--base-dtype bfloat16` casts
               the frozen weights to bf16 as plan.py assumes) and activations at 4 bytes when the residual
               stream is fp32 (fp32 embeddings, with or without bf16 autocast). Shows whether the
               formula's *shape* holds once the element sizes are accounted for.
  ratio@run    measured / planned@run.
The JSON also holds plan.py's components, and the measured steady state after the warm-up step
(weights + adapter states, compare with planned weights + trainable_states) and the transient above it
(compare with planned activations + logits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GiB = 1024**3
# bench name -> plan.py's KNOWN_SHAPES key (the Hub id a recipe would name)
SHAPES = {"qwen2.5-math-1.5b": "qwen/qwen2.5-math-1.5b", "qwen2.5-math-7b": "qwen/qwen2.5-math-7b"}
TOPK = 20  # soft labels per token (generate.sampling.topk_logprobs in the R1 recipes)


# ----------------------------------------------------------------------------------------- recipe + plan


def make_recipe(shape: str, layers: int, seq: int, method: str, steps: int, lora_r: int, chunk_size: int,
                bf16: bool | None, output_dir: str = "/tmp/bench_plan_memory"):
    """The train section a user would write for this variant (so the planner and the trainer read the same)."""
    from distillkit.config import validate_recipe

    return validate_recipe({
        "name": "bench_plan_memory", "output_dir": output_dir, "stages": ["train"],
        "train": {"student": {"model": SHAPES[shape], "keep_layers": f"first:{layers}"}, "method": method,
                  "lora": {"r": lora_r}, "kd": {"enabled": True, "chunk_size": chunk_size},
                  "max_length": seq, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                  "gradient_checkpointing": True, "packing": True, "bf16": bf16, "learning_rate": 1e-4,
                  "sft_args": {"max_steps": steps, "save_strategy": "no", "logging_steps": 1000}},
    })


def planned_memory(cfg, on_gpu: bool, base_bytes: float | None = None, act_bytes: float | None = None) -> dict:
    """plan.py's estimate for `cfg` (GiB): as `distillkit plan` computes it, and at this run's element sizes.

    `base_bytes`: bytes per unquantized base weight in the run (all of them for LoRA, the embeddings and
    head for QLoRA); `act_bytes`: per activation element (None: plan.py's own 2, bf16). On CPU the
    `overhead` term (1 GiB CUDA context + 8% allocator slack) is dropped from both figures.
    """
    from dataclasses import asdict

    from distillkit.plan import ModelShape, estimate_training, model_shape

    t = cfg.train
    full = model_shape(t.student.model)
    layers = int(t.student.keep_layers.split(":")[1])
    shape = ModelShape(**{**asdict(full), "layers": min(layers, full.layers)})
    # The same arguments plan_recipe passes (tests/test_bench_plan_memory.py checks the totals agree).
    est = estimate_training(shape, t.method, seq_len=t.max_length, micro_batch=t.per_device_train_batch_size,
                            lora_r=t.lora.r, target_modules=t.lora.target_modules,
                            gradient_checkpointing=t.gradient_checkpointing, kd_chunk=t.kd.chunk_size)
    parts = {"weights": est.weights, "trainable_states": est.trainable_states, "activations": est.activations,
             "logits": est.logits, "overhead": est.overhead}
    total = est.total if on_gpu else est.total - est.overhead
    at_run = dict(parts)
    if base_bytes and t.method == "qlora":  # only the embeddings and head are unquantized
        at_run["weights"] = est.weights + shape.embed_params * (base_bytes - 2)
    elif base_bytes:
        at_run["weights"] = est.weights * base_bytes / 2
    if act_bytes:
        at_run["activations"] = est.activations * act_bytes / 2
    sized = at_run["weights"] + at_run["trainable_states"] + at_run["activations"] + at_run["logits"]
    at_run_total = sized + (1 * GiB + 0.08 * sized if on_gpu else 0)
    return {"planned_gib": total / GiB, "planned_at_run_gib": at_run_total / GiB,
            "plan_total_gib": est.total / GiB,
            "plan_components_gib": {k: v / GiB for k, v in parts.items()},
            "plan_at_run_components_gib": {k: v / GiB for k, v in at_run.items() if k != "overhead"},
            "plan_trainable_params": est.trainable_params, "plan_params": est.total_params,
            "overhead_excluded": not on_gpu}


# ----------------------------------------------------------------------------------------- worker


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def write_random_student(shape_key: str, layers: int, seq: int, folder: Path, device: str) -> None:
    """A student_init/ folder: a random-weight Qwen2 of the named shape (first `layers` layers) in bf16,
    saved as `build_student_init` saves one, with distillkit's tiny test tokenizer (memory does not
    depend on the tokenizer; the model's vocabulary keeps its real size)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from distillkit.plan import KNOWN_SHAPES
    from distillkit.testing import build_tiny_tokenizer

    s = KNOWN_SHAPES[SHAPES[shape_key]]
    tok = build_tiny_tokenizer(folder)
    config = Qwen2Config(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=min(layers, s.layers), num_attention_heads=s.heads,
                         num_key_value_heads=s.kv_heads, tie_word_embeddings=s.tied, rope_theta=10000.0,
                         max_position_embeddings=max(4096, seq), use_sliding_window=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    # transformers' own init (normal_ per module) takes ~10 s for the 1.5B embeddings alone on a CPU and
    # minutes for a 7B: memory does not depend on the values, so the weights are filled uniformly
    # (std ~0.02, norms 1) on the device the student trains on, in fp32 on CPU (bf16 fills are slow there).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0) if p.ndim == 1 else p.uniform_(-0.035, 0.035)
    model.tie_weights()  # to_empty gives the tied head its own storage
    model.to(torch.bfloat16).save_pretrained(folder)  # as build_student_init saves (bf16)
    del model


def synthetic_rows(num: int, seq: int, vocab: int, seed: int = 0):
    """`num` packed rows of `seq` tokens shaped like build_train_dataset's output: every token trained and
    soft-labelled with a peaked top-k (the trained token first, mass ~0.9; row t describes token t)."""
    import numpy as np
    from datasets import Dataset, Features, List, Value

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(num, seq), dtype=np.int64)
    kd_ids = rng.integers(0, vocab, size=(num, seq, TOPK), dtype=np.int64)
    kd_ids[:, :, 0] = ids
    lp = np.array([-0.1] + [-4.0 - j for j in range(TOPK - 1)], dtype=np.float32)
    feats = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")),
                      "kd_ids": List(List(Value("int32"), length=TOPK)),
                      "kd_logprobs": List(List(Value("float32"), length=TOPK)), "kd_mask": List(Value("int8"))})
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist(), "kd_ids": kd_ids.tolist(),
                              "kd_logprobs": [[lp.tolist()] * seq] * num, "kd_mask": [[1] * seq] * num},
                             features=feats)


def worker(args) -> None:
    """One variant in this process: prints its row as one JSON line."""
    import torch

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    used_at_start = 0
    if on_gpu:  # what is in use before this worker allocates anything: its own context (+ any other process)
        free, total = torch.cuda.mem_get_info()
        used_at_start = total - free
    else:
        torch.set_flush_denormal(True)  # as the train stage does: fp32 denormals slow CPU matmuls ~10x
    bf16 = True if args.base_dtype == "bfloat16" else None  # a bf16 base needs bf16 autocast (CPU too)
    work = Path(tempfile.mkdtemp(prefix="bench_plan_memory_"))
    cfg = make_recipe(args.shape, args.layers, args.seq, args.method, args.steps, args.lora_r, args.chunk_size,
                      bf16, output_dir=str(work))
    try:
        print(json.dumps(_measure(args, cfg, work, device, used_at_start)))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a 7B student_init is 15 GB


def _measure(args, cfg, work: Path, device: str, used_at_start: int) -> dict:
    import gc

    import torch
    from transformers import TrainerCallback

    from distillkit.plan import KNOWN_SHAPES
    from distillkit.student.build import load_student, resolve_bf16
    from distillkit.train.stage import build_trainer, sft_config

    on_gpu = device == "cuda"
    init = work / "student_init"
    write_random_student(args.shape, args.layers, args.seq, init, device)
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    base_rss = _status_kb("VmRSS")

    model, tok = load_student(cfg.train, init)
    if args.base_dtype == "bfloat16":  # plan.py's assumption: the frozen base in bf16, adapters in fp32
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(torch.bfloat16)
    use_bf16 = resolve_bf16(cfg.train.bf16)
    # PEFT's prepare_model_for_kbit_training (QLoRA) casts the unquantized embeddings and head to fp32.
    embed = model.get_input_embeddings().weight
    base_bytes = embed.element_size()
    # The residual stream (what checkpointing keeps per layer) has the embeddings' dtype: fp32 with an
    # fp32 base even under bf16 autocast, which only lowers the matmul outputs.
    act_bytes = embed.element_size()

    class Meter(TrainerCallback):
        """Resets the peak after the warm-up step (AdamW states exist from then on) and reads it at the end."""

        def __init__(self):
            self.steady = self.peak = self.allocated = self.t0 = None

        def on_step_end(self, a, state, control, **kw):
            if state.global_step != 1:
                return
            gc.collect()
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.steady = torch.cuda.memory_allocated()
            else:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # VmHWM := current RSS
                self.steady = (_status_kb("VmRSS") - base_rss) * 1024
            self.t0 = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            self.seconds = time.perf_counter() - self.t0
            if on_gpu:
                torch.cuda.synchronize()
                self.allocated = torch.cuda.max_memory_allocated()
                free, total = torch.cuda.mem_get_info()
                self.unmanaged = (total - free) - torch.cuda.memory_reserved()  # context, kernels, cuBLAS
                self.peak = torch.cuda.max_memory_reserved() + self.unmanaged
            else:
                self.peak = (_status_kb("VmHWM") - base_rss) * 1024

    meter = Meter()
    vocab = KNOWN_SHAPES[SHAPES[args.shape]].vocab
    trainer = build_trainer(cfg, model, tok, synthetic_rows(args.steps, args.seq, vocab),
                            sft_config(cfg, work, use_bf16), callbacks=[meter])
    trainer.train()
    plan = planned_memory(cfg, on_gpu, base_bytes=base_bytes, act_bytes=act_bytes)
    row = {
        "shape": args.shape, "layers": args.layers, "seq": args.seq, "method": args.method,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "bf16_autocast": use_bf16,
        "base_dtype": str(embed.dtype).removeprefix("torch."), "lora_r": args.lora_r,
        "chunk_size": args.chunk_size, "steps_measured": args.steps - 1,
        "measured_gib": meter.peak / GiB, **plan,
        "ratio": meter.peak / GiB / plan["planned_gib"],
        "ratio_at_run": meter.peak / GiB / plan["planned_at_run_gib"],
        "measured_steady_gib": meter.steady / GiB, "measured_transient_gib": (meter.peak - meter.steady) / GiB,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds_per_step": meter.seconds / max(1, args.steps - 1),
        "final_loss": trainer.state.log_history[-1].get("train_loss"),
    }
    if on_gpu:
        row.update(measured_allocated_gib=meter.allocated / GiB, unmanaged_gib=meter.unmanaged / GiB,
                   device_used_at_start_gib=used_at_start / GiB)
    return row


# ----------------------------------------------------------------------------------------- main


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # a killed run never leaves a half-written file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["qwen2.5-math-1.5b"])
    p.add_argument("--method", nargs="+", choices=["lora", "qlora"], default=["lora"])
    p.add_argument("--layers", type=int, default=None,
                   help="keep the first N decoder layers (default: all 28 on a GPU, 2 on CPU)")
    p.add_argument("--seq", type=int, default=None, help="tokens per step (default: 16384 on a GPU, 1024 on CPU)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is a warm-up, not measured")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (recipe default 16)")
    p.add_argument("--chunk-size", type=int, default=256, help="train.kd.chunk_size (recipe default 256)")
    p.add_argument("--base-dtype", choices=["trainer", "bfloat16"], default="trainer",
                   help="frozen base weights as load_student gives them (trainer), or cast to bf16 as plan.py "
                        "assumes (forces bf16 autocast: slow on CPUs without AVX512-BF16)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps={args.steps}: needs >= 2 (the first step is a warm-up, the peak is taken after it)")
    if args.layers is not None and not 1 <= args.layers <= 28:
        p.error(f"--layers={args.layers}: both shapes have 28 decoder layers; choose 1..28")
    if args.worker:
        args.shape, args.method = args.shape[0], args.method[0]
        worker(args)
        return 0

    import torch

    on_gpu = torch.cuda.is_available()
    layers = args.layers or (28 if on_gpu else 2)
    seq = args.seq or (16384 if on_gpu else 1024)
    # Only the workers touch the GPU: a CUDA context here would count in their device-wide figures.
    print(f"{'GPU' if on_gpu else 'CPU'}; LoRA r={args.lora_r} on all linear "
          f"layers, chunked KD (chunk {args.chunk_size}, top-{TOPK}), gradient checkpointing, batch 1, "
          f"{args.steps - 1} measured step(s) after a warm-up; each variant in a fresh subprocess", flush=True)
    env = os.environ.copy()
    # glibc's malloc keeps freed heap memory and raises its mmap threshold after large frees; a fixed
    # threshold makes every allocation over 64 KiB an mmap, so RSS follows live memory (CPU peaks).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    env.setdefault("CUDA_VISIBLE_DEVICES", "0")  # one GPU: Trainer would wrap several in DataParallel
    rows = []
    for shape in args.shape:
        for method in args.method:
            cmd = [sys.executable, __file__, "--worker", "--shape", shape, "--method", method,
                   "--layers", str(layers), "--seq", str(seq), "--steps", str(args.steps),
                   "--lora-r", str(args.lora_r), "--chunk-size", str(args.chunk_size),
                   "--base-dtype", args.base_dtype]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{shape} {method}: failed (rc {out.returncode}): {out.stderr.strip()[-1500:]}", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["wall_seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(f"{shape} {method}: done in {row['wall_seconds']:.0f} s", flush=True)
    header = (f"{'shape':<18} {'layers':>6} {'seq':>6} {'method':<6} {'base':<8} {'measured GiB':>12} "
              f"{'planned GiB':>11} {'ratio':>6} {'planned@run':>11} {'ratio@run':>9}")
    print(header)
    for r in rows:
        print(f"{r['shape']:<18} {r['layers']:>6} {r['seq']:>6} {r['method']:<6} {r['base_dtype']:<8} "
              f"{r['measured_gib']:>12.3f} {r['planned_gib']:>11.3f} {r['ratio']:>6.3f} "
              f"{r['planned_at_run_gib']:>11.3f} {r['ratio_at_run']:>9.3f}")
    for r in rows:
        c, d = r["plan_components_gib"], r["plan_at_run_components_gib"]
        print(f"  {r['shape']} {r['method']}: steady {r['measured_steady_gib']:.3f} GiB vs planned weights + "
              f"states {c['weights'] + c['trainable_states']:.3f} (@run {d['weights'] + d['trainable_states']:.3f}); "
              f"transient {r['measured_transient_gib']:.3f} GiB vs planned activations + logits "
              f"{c['activations'] + c['logits']:.3f} (@run {d['activations'] + d['logits']:.3f})")
    if rows and not on_gpu:
        print("CPU: planned leaves out plan.py's GPU-only overhead (1 GiB CUDA context + 8% allocator slack); "
              "measured = VmHWM minus RSS before the student loads.")
    if args.json:
        _write_json(args.json, rows)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
