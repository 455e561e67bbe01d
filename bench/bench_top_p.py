"""vLLM CPU decode step time with top-p: vLLM's full-vocabulary sort vs distillkit's top-candidates path.

Each setting runs in a fresh process (the plugin is read when vLLM's processes start), same engine
settings as the quickstart's teacher: SmolLM2-135M-Instruct in float32, 128 sequences x 24 forced
tokens (ignore_eos), T=0.6. Prints one JSON report (~9 min on 2 cores).

    .venv/bin/python bench/bench_top_p.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SETTINGS = [(1.0, None), (0.95, None), (0.95, 20), (1.0, 20)]  # (top_p, top-k logprobs)


def child(fast: str, seqs: int, steps: int) -> None:
    os.environ["DISTILLKIT_VLLM_FAST_TOP_P"] = fast
    from vllm import LLM, SamplingParams

    from distillkit.engines.vllm_cpu import prepare_cpu_env
    from distillkit.models import resolve_model

    prepare_cpu_env()
    llm = LLM(model=resolve_model("builtin:smollm2-135m-instruct"), dtype="float32", enforce_eager=True,
              max_model_len=1024, enable_chunked_prefill=False, max_num_batched_tokens=4096, seed=0)
    prompts = [{"prompt_token_ids": list(range(1, 9)) * 8}] * seqs
    out = {}
    for top_p, lp in SETTINGS:
        sp = SamplingParams(temperature=0.6, top_p=top_p, max_tokens=steps, ignore_eos=True, logprobs=lp, seed=1)
        llm.generate(prompts[:8], sp, use_tqdm=False)  # warm-up
        t = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        out[f"top_p={top_p},logprobs={lp}"] = round((time.perf_counter() - t) / steps, 4)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    seqs, steps = 128, 24
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], seqs, steps)
    results = {}
    for fast in ("0", "1"):
        proc = subprocess.run([sys.executable, __file__, "--child", fast], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"the child with DISTILLKIT_VLLM_FAST_TOP_P={fast} failed:\n{proc.stderr[-3000:]}")
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results["distillkit" if fast == "1" else "vllm_sort"] = json.loads(line[len("RESULT "):])
    report = {"setup": {"sequences": seqs, "steps": steps, "seconds_per_step": results},
              "speedup": {k: round(results["vllm_sort"][k] / results["distillkit"][k], 2) for k in results["distillkit"]}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
