"""vLLM's OpenAI-compatible server for a model, started on a free local port of this machine and stopped on exit:
evaluation's `local-completions` backend and `teacher.openai.serve` use it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.hardware import cpu_has_fast_bf16, torch_device

log = logging.getLogger(__name__)


@contextlib.contextmanager
def vllm_server(model_path: str, seed: int, startup_timeout_s: float = 900.0, extra_args: Sequence[str] = ()):
    """Serve `model_path` with vLLM's OpenAI-compatible server on a free local port; yields its base URL.

    Started as `python -m vllm.entrypoints.openai.api_server` because the `vllm` console script
    fails under the CPU build (it looks up package metadata named `vllm`). Stopped on exit.
    """
    import subprocess
    import tempfile

    port = _free_port()
    cmd = _server_command(model_path, port, seed, extra_args)
    env = _server_env(extra_args)
    log.info("starting a vLLM server for %s on port %d", model_path, port)
    # Server output goes to a file: an unread pipe fills up and blocks the server.
    server_log = tempfile.NamedTemporaryFile("w+", prefix="distillkit-vllm-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=server_log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(proc, url, server_log.name, model_path, startup_timeout_s)
        try:
            yield url
        except Exception as e:
            if proc.poll() is None:
                raise
            from distillkit.faults import EnvironmentFault, killed_hint, signal_name

            raise EnvironmentFault("process", f"the vLLM server for {model_path} stopped while in use "
                                   f"({signal_name(proc.returncode)}; its log: {server_log.name})",
                                   killed_hint(proc.returncode)) from e
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        server_log.close()


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return port


def _server_command(model_path: str, port: int, seed: int, extra_args: Sequence[str]) -> list[str]:
    """The server's command line, with the CPU build's settings on a machine without a GPU."""
    import sys

    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--host", "127.0.0.1", "--port", str(port), "--seed", str(seed), *extra_args]
    if torch_device() == "cpu":
        from distillkit.engines.vllm_cpu import CPU_BLOCK_SIZE

        cmd += ["--enforce-eager", "--block-size", str(CPU_BLOCK_SIZE)]  # 32: prefix caching shares the prompts' prefix
        if not cpu_has_fast_bf16() and "--dtype" not in extra_args:
            # A bf16 config (SmolLM2's, students saved in bf16) would run vllm-cpu's emulated bf16
            # kernels: 2.7x slower than float32 on an AVX2 CPU (BENCHMARKS.md, Generation).
            cmd += ["--dtype", "float32"]
    return cmd


def _server_env(extra_args: Sequence[str]) -> dict[str, str]:
    """The server's environment: vllm-cpu's settings for one local server, under what the user set."""
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "DISTILLKIT_VLLM_FAST_TOP_P": "1"}
    if torch_device() == "cpu" and not _parallel_args(extra_args):
        # One worker: vLLM runs it inside the engine-core process instead of spawning a third process that
        # imports torch and vLLM again (~10 s of a ~37 s start on 2 cores). vllm-cpu then leaves the threads to
        # torch, which OMP_NUM_THREADS sizes (unset, vLLM would drop it to one thread for serving).
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS=str(len(os.sched_getaffinity(0))))
    env.update(os.environ)  # what the user set wins
    return env


def _wait_until_healthy(proc, url: str, log_path: str, model_path: str, startup_timeout_s: float) -> None:
    """Poll the server's /health until it answers; a server that exits, or does not answer within
    `startup_timeout_s`, is an error (with the end of its log when it exited)."""
    import time
    import urllib.request

    deadline = time.time() + startup_timeout_s
    while True:
        if proc.poll() is not None:
            tail = Path(log_path).read_text(errors="replace")[-2000:]
            raise DistillkitError(f"the vLLM server for {model_path} exited with code {proc.returncode} "
                                  f"(log: {log_path}):\n{tail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                break
        except OSError:
            if time.time() > deadline:
                raise DistillkitError(f"the vLLM server for {model_path} did not start in {startup_timeout_s:.0f} s")
            time.sleep(2)


def _parallel_args(args: Sequence[str]) -> bool:
    """Whether vLLM server arguments ask for more than one worker (tensor, pipeline or data parallel)."""
    flags = {"--tensor-parallel-size", "-tp", "--pipeline-parallel-size", "-pp", "--data-parallel-size", "-dp"}
    args = list(args)
    for i, a in enumerate(args):
        name, _, value = a.partition("=")
        if name in flags:
            value = value or (args[i + 1] if i + 1 < len(args) else "1")
            if value.isdigit() and int(value) > 1:
                return True
    return False
