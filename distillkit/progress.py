"""Progress bars for long loops: rich bars on stderr that leave stdout and other writers alone.

On a terminal the bar is live. Without one (a batch job's log file, CI, `nohup`), rich draws
nothing until the end, so the same calls log a line instead, at most every `log_every` seconds
and once when a loop that took longer ends: `generate: 120/300 prompts (40%), 512.3 tok/s, 2m10s elapsed, ~3m15s left`.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("distillkit.progress")

LOG_EVERY_S = 30.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(task, unit: str = "") -> str:
    """One log line for a rich `Task`: done/total, percentage, numeric fields, elapsed, time left."""
    done = int(task.completed)
    head = f"{task.description}: {done}/{int(task.total)}" if task.total is not None else f"{task.description}: {done}"
    if unit:
        head += f" {unit}"
    parts = [head + (f" ({100 * task.completed / task.total:.0f}%)" if task.total else "")]
    parts += [f"{v:.1f} {k.replace('_', '/')}" for k, v in task.fields.items() if isinstance(v, (int, float))]
    parts.append(f"{_duration(task.elapsed)} elapsed")
    if not task.finished and task.time_remaining is not None:
        parts.append(f"~{_duration(task.time_remaining)} left")
    return ", ".join(parts)


def progress_bar(*columns, transient: bool = False, unit: str = "", log_every: float = LOG_EVERY_S, console=None):
    """A rich `Progress` on stderr; on a non-terminal stderr it logs progress lines instead (see above).

    stdout/stderr are not redirected through the live display: libraries write their own tqdm bars
    to stderr (transformers loading weights, vLLM), and redirecting those inside a Jupyter kernel
    recurses until Python's stack overflows. `console` replaces the stderr console (tests).
    """
    from rich.console import Console
    from rich.progress import Progress

    class LoggedProgress(Progress):
        """Progress that also logs when nobody can see the live bar."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._logs = not self.console.is_terminal or self.console.is_dumb_terminal
            self._last_log: dict = {}
            self._final: set = set()
            self._logged: set = set()

        def _maybe_log(self, task_id, final: bool = False) -> None:
            if not self._logs or task_id in self._final:
                return
            now = time.monotonic()
            if final or now - self._last_log.get(task_id, now) >= log_every:
                with self._lock:
                    task = self._tasks.get(task_id)
                if task is None:
                    return
                if final:
                    self._final.add(task_id)
                    if task_id not in self._logged and (task.elapsed or 0) < log_every:
                        return  # a short loop: rich's closing render of the bar says it all
                self._last_log[task_id] = now
                self._logged.add(task_id)
                log.info(progress_line(task, unit))

        def add_task(self, *args, **kwargs):
            task_id = super().add_task(*args, **kwargs)
            self._last_log[task_id] = time.monotonic()  # the first line after log_every, not at once
            return task_id

        def update(self, task_id, *args, **kwargs):
            super().update(task_id, *args, **kwargs)
            self._maybe_log(task_id)

        def advance(self, task_id, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._maybe_log(task_id)

        def stop(self) -> None:
            for task_id in list(self._tasks):
                if self._tasks[task_id].completed:
                    self._maybe_log(task_id, final=True)
            super().stop()

    return LoggedProgress(*columns, console=console or Console(stderr=True), transient=transient,
                          redirect_stdout=False, redirect_stderr=False)
