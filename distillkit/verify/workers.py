"""A small process pool with a per-task wall-clock timeout that kills and replaces a stuck worker.

`concurrent.futures.ProcessPoolExecutor` cannot cancel a running task, so one pathological input
(math-verify on `9^{9^{9^{9}}}` runs for as long as sympy likes) would stall a whole run. Here each
worker owns a pipe; a task that overruns its deadline gets its worker SIGKILLed and restarted, and
the task reports `timeout`. A worker that dies (segfault, OOM kill) reports `crashed`. Threads are
not an option: math-verify's own timeouts use SIGALRM, which only works in a main thread.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    status: str  # "ok", "error" (the function raised), "timeout", "crashed"
    value: Any = None
    error: str = ""


def _worker_main(conn, func_path: str, warmup_path: str | None) -> None:
    module, _, name = func_path.partition(":")
    func = getattr(importlib.import_module(module), name)
    if warmup_path:  # import heavy libraries before saying "ready", so no task's deadline pays for it
        wmod, _, wname = warmup_path.partition(":")
        getattr(importlib.import_module(wmod), wname)()
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, args = msg
        try:
            conn.send((task_id, ("ok", func(*args), "")))
        except Exception as e:  # report, keep serving: one bad input must not take the worker down
            conn.send((task_id, ("error", None, f"{type(e).__name__}: {e}")))


def _stderr_fd() -> int:
    """The caller's stderr as a file descriptor; the process's own (2) where sys.stderr is no file (a notebook,
    pytest's capsys), which raised io.UnsupportedOperation there."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return 2


class _Worker:
    """One worker: a fresh `python -m distillkit.verify.workers` talking over a socket pair.

    A plain subprocess rather than `multiprocessing.Process`: the spawn start method re-imports the
    caller's `__main__`, which fails from a notebook or stdin and reruns unguarded scripts; fork is
    unsafe in a parent with pyarrow threads. This needs neither.
    """

    def __init__(self, func_path: str, warmup_path: str | None):
        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-m", "distillkit.verify.workers", str(theirs.fileno()), func_path, warmup_path or ""]
        # stdout -> stderr: a chatty library in the worker must not corrupt the caller's stdout.
        self.proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=_stderr_fd())
        theirs.close()
        self.conn = Connection(os.dup(ours.fileno()))
        ours.close()
        self.task: int | None = None
        self.deadline = 0.0
        self.ready = False

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


class TimeoutPool:
    """`map(items)` runs `func(*item)` in `num_workers` processes, each call limited to `timeout_s`.

    `func_path` and `warmup_path` are "module:function" strings so the pool works under the `spawn`
    start method (nothing is pickled but the arguments and results).
    """

    def __init__(self, func_path: str, num_workers: int = 1, timeout_s: float = 10.0,
                 warmup_path: str | None = None):
        self.func_path = func_path
        self.warmup_path = warmup_path
        self.num_workers = max(1, num_workers)
        self.timeout_s = timeout_s
        self.restarts = 0
        self._workers: list[_Worker] = []

    def _spawn(self) -> _Worker:
        return _Worker(self.func_path, self.warmup_path)

    def _ensure_started(self) -> None:
        if not self._workers:
            self._workers = [self._spawn() for _ in range(self.num_workers)]

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._spawn()
        self.restarts += 1

    def map(self, items: Sequence[tuple], on_done: Callable[[int], None] | None = None) -> list[TaskResult]:
        self._ensure_started()
        results: list[TaskResult | None] = [None] * len(items)
        pending = list(range(len(items)))[::-1]  # pop() from the end keeps input order
        running = 0
        while pending or running:
            for w in self._workers:  # hand out work to every idle, ready worker
                if w.ready and w.task is None and pending:
                    tid = pending.pop()
                    w.conn.send((tid, items[tid]))
                    w.task, w.deadline = tid, time.monotonic() + self.timeout_s
                    running += 1
            busy = [w for w in self._workers if w.task is not None]
            now = time.monotonic()
            wait_s = min([w.deadline - now for w in busy], default=1.0)
            ready_conns = wait([w.conn for w in self._workers], timeout=max(0.0, wait_s))
            for i, w in enumerate(list(self._workers)):
                if w.conn in ready_conns:
                    try:
                        tid, payload = w.conn.recv()
                    except (EOFError, OSError):  # the worker died
                        if not w.ready:  # died while importing: restarting would loop forever
                            self.close()
                            raise RuntimeError(f"a worker running {self.func_path} failed to start "
                                               f"(exit code {w.exitcode}); see its stderr above")
                        if w.task is not None:
                            results[w.task] = TaskResult("crashed", error=f"worker exit code {w.exitcode}")
                            running -= 1
                            if on_done:
                                on_done(1)
                        self._replace(i)
                        continue
                    if tid == "ready":
                        w.ready = True
                        continue
                    status, value, error = payload
                    results[tid] = TaskResult(status, value, error)
                    w.task = None
                    running -= 1
                    if on_done:
                        on_done(1)
                elif w.task is not None and time.monotonic() >= w.deadline:
                    results[w.task] = TaskResult("timeout", error=f"no answer within {self.timeout_s:g}s")
                    running -= 1
                    if on_done:
                        on_done(1)
                    log.debug("task %s timed out; restarting its worker", w.task)
                    self._replace(i)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            try:
                w.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    import signal

    from distillkit.faults import die_with_parent

    die_with_parent(signal.SIGKILL)  # a killed filter takes its workers with it
    # sys.stdout is the caller's stderr (see _Worker); argv: socket fd, "module:func", "module:warmup" or "".
    try:
        _worker_main(Connection(int(sys.argv[1])), sys.argv[2], sys.argv[3] or None)
    except (BrokenPipeError, ConnectionResetError):  # the filter is gone: nobody is left to answer
        pass
