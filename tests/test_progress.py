"""Progress bars log their state when stderr is not a terminal (batch jobs, CI, nohup)."""

from __future__ import annotations

import io
import logging

from rich.console import Console
from rich.progress import TextColumn

from distillkit.progress import progress_bar


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "distillkit.progress"]


def test_non_terminal_progress_logs_lines_and_one_final_line(caplog):
    caplog.set_level(logging.INFO, logger="distillkit.progress")
    console = Console(file=io.StringIO(), force_terminal=False)
    with progress_bar(TextColumn("x"), unit="prompts", log_every=0, console=console) as p:
        task = p.add_task("generate", total=10, tok_s=0.0)
        p.update(task, advance=3, tok_s=512.25)
        p.advance(task, 7)
    lines = _lines(caplog)
    assert len(lines) == 3  # two updates and the final line at stop, not repeated
    assert lines[0].startswith("generate: 3/10 prompts (30%), 512.2 tok/s, ") and "elapsed" in lines[0]
    assert lines[-1].startswith("generate: 10/10 prompts (100%)") and "left" not in lines[-1]
    p.stop()  # a second stop logs nothing more
    assert len(_lines(caplog)) == 3


def test_lines_are_rate_limited_and_short_loops_log_nothing(caplog, monkeypatch):
    import distillkit.progress as progress_mod

    caplog.set_level(logging.INFO, logger="distillkit.progress")
    console = Console(file=io.StringIO(), force_terminal=False)
    with progress_bar(TextColumn("x"), log_every=60, console=console) as p:
        task = p.add_task("filter math", total=100)
        p.add_task("filter dedup", total=100)  # never advanced: no final line
        for _ in range(100):
            p.advance(task)
    assert _lines(caplog) == []  # under a minute: the closing render of the bar is enough

    clock = [1000.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    with progress_bar(TextColumn("x"), log_every=60, console=console) as p:
        task = p.add_task("filter math", total=100)
        for _ in range(100):
            clock[0] += 1.5  # 150 s in all: lines at 60 s and 120 s, then the final one
            p.advance(task)
    lines = _lines(caplog)
    assert [line.split(" (")[0] for line in lines] == ["filter math: 40/100", "filter math: 80/100",
                                                       "filter math: 100/100"]


def test_terminal_progress_draws_the_bar_and_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="distillkit.progress")
    out = io.StringIO()
    with progress_bar(TextColumn("{task.description}"), log_every=0, console=Console(file=out, force_terminal=True)) as p:
        task = p.add_task("generate", total=2)
        p.advance(task, 2)
    assert _lines(caplog) == [] and "generate" in out.getvalue()
