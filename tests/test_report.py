"""The HTML run report, rendered in a real headless Chromium: every section, no console errors."""

import json
import re
import shutil
import subprocess

import pytest

from distillkit.publish.report import SECTIONS, build_report
from distillkit.records import StageOutput, atomic_write_json, make_record, record_features

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _fake_run(root):
    gen = StageOutput(root / "generate", "generate", "g")
    gen.begin()
    gen.write_shard(0, [make_record(prompt_id=f"p{i}", problem=f"What is {i}+1?", gold_answer=str(i + 1),
                                    completion=f"{i}+1={i + 1}</think> \\boxed{{{i + 1}}}", completion_tokens=10 + i)
                        for i in range(8)], record_features())
    gen.finish(counts={"records": 8})
    filt = StageOutput(root / "filter", "filter", "f")
    filt.begin()
    kept = [make_record(prompt_id=f"p{i}", problem=f"What is {i}+1?", completion="ok </script><b>x</b>",
                        completion_tokens=12, verdicts=[{"verifier": "math", "passed": True, "reason": "correct"}])
            for i in range(3)]
    rejected = [make_record(prompt_id=f"r{i}", problem="Hard?", completion="loop loop loop", completion_tokens=90,
                            finish_reason="length",
                            verdicts=[{"verifier": "truncation", "passed": False, "reason": "truncated"}])
                for i in range(2)]
    filt.write_shard(0, kept, record_features())
    from distillkit.records import write_shard

    write_shard(root / "filter" / "rejected", 0, rejected, record_features())
    filt.finish(counts={"records": 3, "rejected": 2},
                stats={"funnel": [{"step": "input", "out": 5}, {"step": "truncation", "out": 3}],
                       "reasons": {"truncation": {"truncated": 2}}})
    train = StageOutput(root / "train", "train", "t")
    train.begin()
    train.finish(counts={"steps": 3}, stats={"loss_curve": [{"step": s, "loss": 2.0 / s, "ce": 1.5 / s, "kl": 0.5 / s}
                                                            for s in (1, 2, 3)]})
    ev = StageOutput(root / "evaluate", "evaluate", "e")
    ev.begin()
    atomic_write_json(root / "evaluate" / "results.json", {"models": {
        "teacher": {"arith": {"pass@1": 0.15, "stderr": 0.03}},
        "student_after": {"arith": {"pass@1": 0.2, "stderr": 0.04}}}})
    ev.finish(counts={"questions": 100})
    return root


def test_report_contains_every_section_and_escapes_text(tmp_path):
    page = build_report(_fake_run(tmp_path / "run")).read_text()
    for sid in SECTIONS:
        assert f"<section id='{sid}'>" in page
    assert "<b>x</b>" not in page  # completion text is data, never markup
    assert "15.0 ± 3.0" in page and "20.0 ± 4.0" in page
    assert "truncation:truncated" in page
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # self-contained: nothing fetched


def test_report_needs_a_run(tmp_path):
    from distillkit.errors import DistillkitError

    with pytest.raises(DistillkitError, match="no finished stage"):
        build_report(tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_report_renders_in_headless_chromium(tmp_path):
    page = build_report(_fake_run(tmp_path / "run"))
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    res = subprocess.run(common + ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom",
                                   page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = res.stdout
    assert 'data-rendered="ok"' in dom, res.stderr[-2000:]
    assert re.search(r"<pre id=\"errors\"></pre>", dom), "a script error was caught on the page"
    assert "5 of 5 samples shown" in dom
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "report.png"
    subprocess.run(common + ["--window-size=1100,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
    json.dumps({"screenshot": str(shot)})
