"""Peak memory and time of the chunked KD loss vs a full-logits KD loss and plain CE (forward + backward).

Run (CPU, fp32, ~4 min on 2 cores, ~11 GB peak for the full-logits baseline):

    .venv/bin/python bench/bench_kd_loss.py                      # vocab 151,936, seq 4,096, hidden 896
    .venv/bin/python bench/bench_kd_loss.py --seq 1024 --chunk-sizes 256   # a quick look

Each variant runs in a fresh subprocess, so peaks never mix. Peak memory is the process's resident
set high-water mark (VmHWM) *after* the inputs exist: the subprocess builds hidden (1,T,H), the head
weight (V,H), labels and top-k soft labels, runs a small warm-up, resets VmHWM (`echo 5 >
/proc/self/clear_refs`, Linux >= 4.0), runs one forward + backward, and reports VmHWM - VmRSS before.
Large torch CPU tensors are mmap-backed, so freeing them lowers RSS and the high-water mark is the
true peak of live memory (tracemalloc does not see torch's allocations).

Variants (all: B=1, every position trained, trainable head weight, so each includes a (V,H) gradient):
  ce           F.cross_entropy on full logits hidden @ W.T                  (the baseline to match)
  full_kd      distillkit's kd_loss_from_logits on full logits (same loss as chunked, unchunked)
  chunked@N    distillkit's chunked_kd_loss, chunk_size N
The KD loss is alpha=0.5, forward KL, topk_tail, k=20, T=1 (the recipe default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _inputs(seq, vocab, hidden, topk, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    h = torch.randn(1, seq, hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * hidden ** -0.5).requires_grad_()
    labels = torch.randint(0, vocab, (1, seq), generator=g)
    ids = torch.randint(0, vocab, (1, seq, topk), generator=g)
    lp = torch.randn(1, seq, topk, generator=g).log_softmax(-1) - 0.1  # top-k mass e^-0.1 ~ 0.9
    return h, w, labels, ids, lp.half()


def _step(variant, h, w, labels, ids, lp):
    import torch.nn.functional as F

    from distillkit.train.losses import chunked_kd_loss, kd_loss_from_logits

    kw = dict(topk_ids=ids, topk_logprobs=lp, alpha=0.5, divergence="forward_kl", teacher_probs="topk_tail")
    if variant == "ce":
        logits = h @ w.t()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    elif variant == "full_kd":
        loss = kd_loss_from_logits(h @ w.t(), labels, **kw)[0]
    elif variant.startswith("chunked@"):
        loss = chunked_kd_loss(h, w, labels, chunk_size=int(variant.split("@")[1]), **kw)[0]
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    loss.backward()
    return loss.item()


def worker(args) -> None:
    import gc

    import torch

    torch.manual_seed(0)
    small = _inputs(64, args.vocab, args.hidden, args.topk)  # warm-up: kernels, allocator, lazy imports
    _step(args.worker, *small)
    del small
    h, w, labels, ids, lp = _inputs(args.seq, args.vocab, args.hidden, args.topk)
    gc.collect()
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark to the current RSS
    t0 = time.perf_counter()
    loss = _step(args.worker, h, w, labels, ids, lp)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    print(json.dumps({"variant": args.worker, "peak_mb": (peak - base) / 1024, "seconds": seconds, "loss": loss,
                      "threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896, help="896 = Qwen2.5-0.5B")
    p.add_argument("--topk", type=int, default=20)
    p.add_argument("--chunk-sizes", default="1024,256")
    p.add_argument("--variants", default="ce,full_kd,chunked")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    variants = []
    for v in args.variants.split(","):
        variants += [f"chunked@{c}" for c in args.chunk_sizes.split(",")] if v == "chunked" else [v]
    print(f"vocab {args.vocab}, seq {args.seq}, hidden {args.hidden}, top-k {args.topk}, fp32, B=1, "
          f"forward+backward, each variant in a fresh subprocess", flush=True)
    rows = {}
    for v in variants:
        cmd = [sys.executable, __file__, "--worker", v, "--seq", str(args.seq), "--vocab", str(args.vocab),
               "--hidden", str(args.hidden), "--topk", str(args.topk)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            print(f"{v}: failed (rc {out.returncode}): {out.stderr.strip()[-500:]}", flush=True)
            continue
        rows[v] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[v]
        print(f"{v:>14}: peak {r['peak_mb']:9.0f} MB   time {r['seconds']:7.1f} s   loss {r['loss']:.4f}", flush=True)
    ce, full = rows.get("ce"), rows.get("full_kd")
    for v, r in rows.items():
        if not v.startswith("chunked@"):
            continue
        parts = [f"{v}:"]
        if full:
            parts.append(f"memory vs full-logits KD {r['peak_mb'] / full['peak_mb']:.3f}x (target <= 0.25x)")
        if ce:
            parts.append(f"memory vs plain CE {r['peak_mb'] / ce['peak_mb']:.3f}x (target <= 1.5x)")
            parts.append(f"time vs plain CE {r['seconds'] / ce['seconds']:.2f}x")
        print("  ".join(parts))


if __name__ == "__main__":
    main()
