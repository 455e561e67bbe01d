"""The HTML run report, built from stage outputs in the shapes the real stages write, and rendered in a
real headless Chromium: every section, no console errors, what a person sees (bars, values, no overflow)."""

import json
import re
import shutil
import subprocess

import pytest

from distillkit.config import validate_recipe
from distillkit.filter.stage import run_filter
from distillkit.publish.report import SECTIONS, build_report
from distillkit.records import StageOutput, make_record, record_features
from distillkit.schemas.evaluate import Baseline, EvalResults, ModelResult, Protocol, TaskInfo, TaskScore
from distillkit.schemas.train import TrainStats

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
LONG = "https://example.org/" + "a" * 300 + " $\\frac{" + "x" * 250 + "}{2}$"  # must wrap, not overflow
PASS_REASONS = ["truncation:complete", "length:length_ok", "dedup:unique", "selection:selected"]
# (model, task) -> (pass@1, stderr, pass@k), as fractions
SCORES = {("teacher", "distillkit_arith"): (0.342, 0.041, 0.45),
          ("student_before", "distillkit_arith"): (0.017, 0.012, 0.03),
          ("student_after", "distillkit_arith"): (0.375, 0.044, 0.5), ("teacher", "r1_math500"): (0.1, 0.03, None),
          ("student_before", "r1_math500"): (0.0, 0.0, None), ("student_after", "r1_math500"): (0.08, 0.027, None)}


def _generations(n: int = 10) -> list[dict]:
    """Teacher samples: complete, truncated (finish_reason length), too long, too short to judge the
    language of, an exact duplicate, one with an unbreakable URL/LaTeX line, one with markup."""
    recs = []
    for i in range(n):
        text = f"Tom has {i} apples and buys one more, so he has {i} + 1 = {i + 1} apples in total now."
        recs.append(make_record(prompt_id=f"p{i // 2}", sample_index=i % 2, source="arith",
                                problem=f"What is {i}+1?", gold_answer=str(i + 1), completion=text,
                                completion_tokens=20 + i, finish_reason="stop"))
    recs[1].update(finish_reason="length", completion_tokens=96)
    recs[2].update(completion_tokens=200)  # length: too_long
    recs[3].update(completion="7")  # language: too few letters to judge (passed None)
    recs[5].update(completion=recs[4]["completion"])  # dedup: exact duplicate within prompt p2
    recs[6].update(completion="see " + LONG, problem="Read " + LONG)
    recs[7].update(completion="ok </script><b>x</b> and some more words to be judged as English text here.")
    return recs


def _fake_run(root, write_rejected: bool = True):
    """A run folder: generate and train/evaluate outputs written with the stages' writers and shapes,
    the filter output by the real filter stage (its manifest and kept/rejected shards)."""
    cfg = validate_recipe({
        "name": "reporttest", "output_dir": str(root),
        "generate": {"teacher": {"model": "builtin:smollm2-135m-instruct"}, "prompts": {"builtin": "arith"}},
        "filter": {"verifiers": [{"kind": "truncation", "require_closed_reasoning": False},
                                 {"kind": "language", "field": "completion"},
                                 {"kind": "length", "max_tokens": 100}],
                   "dedup": {"near": {"enabled": False}}, "write_rejected": write_rejected,
                   "selection": {"policy": "max_k", "k": 1}},
    })
    gen = StageOutput(cfg.stage_dir("generate"), "generate", "g")
    gen.begin()
    recs = _generations()
    gen.write_shard(0, recs, record_features())
    gen.finish(counts={"rows_read": 5, "bad_rows": 0, "duplicates": 0, "prompts": 5, "samples": len(recs),
                       "tokens": sum(r["completion_tokens"] for r in recs), "shards": 1, "shards_resumed": 0},
               stats={"prescreen": {"model": "student-x", "samples": 4, "solved_at": 0.75, "solved": 2, "prompts": 7,
                                    "dropped": 2},
                      "resample": {"per_round": [{"round": 0, "prompts": 5, "verified": 3},
                                                 {"round": 1, "prompts": 2, "verified": 1}], "never_verified": 1}})
    run_filter(cfg, show_progress=False)

    # train: a 10-step run logged every 5 steps (LossCurveCallback rows -> stats.loss_curve)
    train = StageOutput(cfg.stage_dir("train"), "train", "t")
    train.begin()
    curve = [{"step": 5, "loss": 1.25, "ce": 0.9, "kl": 1.6, "learning_rate": 5e-5},
             {"step": 10, "loss": 0.75, "ce": 0.6, "kl": 0.9, "learning_rate": 0.0}]
    train.finish(counts={"records": 6, "examples": 6, "tokens_seen": 4321, "steps": 10},
                 stats=TrainStats(tokens_seen=4321, tokens_per_s=345.7, train_seconds=12.5, global_steps=10,
                                  final_train_loss=1.0, loss_curve=curve, method="lora", bf16=False,
                                  kd={"enabled": True, "alpha": 0.5, "temperature": 1.0}, trainable_params=1000,
                                  ).dump())  # as the train stage writes them

    ev = StageOutput(cfg.stage_dir("evaluate"), "evaluate", "e")
    ev.begin()
    info = TaskInfo(version=1, source="distillkit", dataset="custom", split="test", prompt="one-shot arithmetic",
                    extraction="last \\boxed{} or 'The answer is N'", scored_text="the whole response", metric="pass@1")
    models = {}
    for (model, task), (p, se, pk) in SCORES.items():
        models.setdefault(model, ModelResult(model=f"/models/{model}", tasks={}))
        models[model].tasks[task] = TaskScore(task=task, metric="pass@1", filter="all_samples", num_questions=60,
                                              num_samples=2, pass_at_1=p, stderr=se, pass_at_k=pk)
    EvalResults(protocol=Protocol(backend="vllm", num_samples=2, temperature=0.6, top_p=0.95, max_gen_toks=96,
                                  limit=60, tasks=["distillkit_arith", "r1_math500"],
                                  task_info={"distillkit_arith": info, "r1_math500": info}),
                models=models, baselines={"distillkit_arith": Baseline(answer="12", pass_at_1=0.05, num_questions=60)},
                ).write(cfg.stage_dir("evaluate") / "results.json")
    ev.finish(counts={"models": 3, "tasks": 2})
    return root


def _section(page: str, sid: str) -> str:
    return re.search(rf"<section id=['\"]{sid}['\"]>(.*?)</section>", page, re.S).group(1)


def _expected_values(run) -> dict[tuple[str, str], str]:
    """pass@1 ± se per (model, task) straight from results.json, formatted as the page shows them."""
    data = json.loads((run / "evaluate" / "results.json").read_text())
    return {(m, t): f"{100 * s['pass_at_1']:.1f} ± {100 * s['stderr']:.1f}"
            for m, r in data["models"].items() for t, s in r["tasks"].items()}


def test_report_contains_every_section_and_escapes_text(tmp_path):
    run = _fake_run(tmp_path / "run")
    page = build_report(run).read_text()
    for sid in SECTIONS:
        assert f"<section id='{sid}'>" in page
    assert "<b>x</b>" not in page  # completion text is data, never markup
    assert "34.2 ± 4.1" in page and "37.5 ± 4.4" in page and "1.7 ± 1.2" in page
    assert "nothing to show" not in page and "<pre>" not in page  # no comparison.md dump
    assert "<code>distillkit_arith</code> v1" in page
    assert "one-shot arithmetic" in page and "last \\boxed{} or" in page  # task_info line
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # self-contained: nothing fetched
    # the teacher's pass rate per prompt, from the filter manifest
    difficulty = _section(page, "difficulty")
    pr = json.loads((run / "filter" / "manifest.json").read_text())["stats"]["pass_rates"]
    assert f"{pr['prompts']} prompts" in difficulty and "<svg" in difficulty
    assert all(f"{float(rate):.0%}" in difficulty for rate in pr["histogram"])
    assert "student pre-screen (student-x, 4 samples per prompt): solved 2 of 7 prompts" in difficulty
    assert "round 0: 5 prompts, 3 verified, round 1: 2 prompts, 1 verified; never verified 1" in difficulty
    # and what each selection rule removed
    sel = json.loads((run / "filter" / "manifest.json").read_text())["stats"]["selection"]
    assert sel["rules"] and f"{sel['prompts_out']} kept" in difficulty
    for rule, c in sel["rules"].items():
        assert f"<td>{rule}</td><td>{c['prompts']}</td><td>{c['traces']}</td>" in difficulty


def test_rejection_reasons_are_rejections_only(tmp_path):
    page = build_report(_fake_run(tmp_path / "run")).read_text()
    reasons = _section(page, "reasons")
    chart = re.search(r"<svg.*?</svg>", reasons, re.S).group(0)
    for rejection in ["truncation:truncated_at_max_tokens", "length:too_long", "dedup:exact_duplicate"]:
        assert rejection in chart
    for passed in PASS_REASONS + ["language:too_short_to_judge"]:
        assert passed not in chart
        assert passed in reasons  # counted apart, in the table of verdicts that let a record through
    assert re.search(r"language:too_short_to_judge</td><td>cannot judge</td><td>1<", reasons)
    assert re.search(r"truncation:complete</td><td>passed</td><td>9<", reasons)


def test_rejection_reasons_without_rejected_shards(tmp_path):
    """filter.write_rejected: false: the manifest's counts, classified by the kept records' verdicts."""
    run = _fake_run(tmp_path / "run", write_rejected=False)
    assert not (run / "filter" / "rejected").exists()
    reasons = _section(build_report(run).read_text(), "reasons")
    chart = re.search(r"<svg.*?</svg>", reasons, re.S).group(0)
    assert "length:too_long" in chart and "truncation:truncated_at_max_tokens" in chart
    assert not any(p in chart for p in PASS_REASONS + ["language:too_short_to_judge"])


def test_loss_curve_of_a_short_run_has_axes_points_and_values(tmp_path):
    training = _section(build_report(_fake_run(tmp_path / "run")).read_text(), "training")
    assert ">step</text>" in training and ">loss</text>" in training
    ticks = re.findall(r"<text class='tick'[^>]*>([^<]+)</text>", training)
    assert {"0", "10"} <= set(ticks) and {"0", "0.5", "1", "1.5"} <= set(ticks)  # x: steps, y: loss
    assert len(re.findall(r"<circle ", training)) == 6  # 2 logged steps x (total, CE, KL)
    assert "total loss, step 5: 1.25" in training  # tooltip
    assert "<td>10</td><td>0.75</td><td>0.6</td><td>0.9</td>" in training  # value table


def test_a_sampled_label_run_charts_kl_sampled_under_its_own_name():
    """Sampled soft labels log `kl_sampled` (KL to counts / N, above the KL by a teacher-set gap), not `kl`: the
    manifest schema takes it and the report draws it under a name that does not read as the KL."""
    from types import SimpleNamespace

    from distillkit.publish.report import _training_section

    curve = [{"step": 1, "loss": 1.5, "ce": 1.0, "kl_sampled": 2.0}, {"step": 2, "loss": 1.0, "ce": 0.8, "kl_sampled": 1.2}]
    stats = TrainStats(tokens_seen=10, tokens_per_s=1.0, train_seconds=10.0, global_steps=2, final_train_loss=1.2,
                       loss_curve=curve, method="full", bf16=False, trainable_params=1).dump()
    training = _training_section(SimpleNamespace(stats=stats))
    assert "KL to sampled counts (biased up), step 2: 1.2" in training and ">KL<" not in training


def test_report_of_an_unreadable_results_file_says_why(tmp_path):
    run = _fake_run(tmp_path / "run")
    (run / "evaluate" / "results.json").write_text(json.dumps({"models": {"teacher": {"arith": {"pass@1": 0.1}}}}))
    evaluation = _section(build_report(run).read_text(), "evaluation")
    assert "class='error'" in evaluation and "not an evaluate results file" in evaluation


def test_report_needs_a_run(tmp_path):
    from distillkit.errors import DistillkitError

    with pytest.raises(DistillkitError, match="no finished stage"):
        build_report(tmp_path)


# Opens every sample and measures again: long text inside the samples must wrap too.
PROBE = ("<script>document.querySelectorAll('details').forEach(function(d){d.open=true;});"
         "var r=document.documentElement;document.body.setAttribute('data-probe',"
         "r.clientWidth+' '+r.scrollWidth);</script></body>")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_report_renders_in_headless_chromium(tmp_path):
    run = _fake_run(tmp_path / "run")
    page = build_report(run)
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE))
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400"]
    res = subprocess.run(common + ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom",
                                   probed.as_uri()], capture_output=True, text=True, timeout=120)
    dom = res.stdout
    assert 'data-rendered="ok"' in dom, res.stderr[-2000:]
    assert re.search(r"<pre id=\"errors\"></pre>", dom), "a script error was caught on the page"
    assert "10 of 10 samples shown" in dom  # 7 kept and 3 rejected records, all embedded
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []

    # no horizontal overflow at 1280 px, samples closed (the page's own check) and all open (the probe)
    assert 'data-overflow="no"' in dom
    width, scroll = map(int, re.search(r'data-probe="(\d+) (\d+)"', dom).groups())
    assert 1200 <= width <= 1280 and scroll <= width, (width, scroll)

    # the evaluation chart: one bar per model and task, showing results.json's pass@1 ± se
    bars = re.findall(r'<g class="bar" data-model="(\w+)" data-task="(\w+)">.*?<text class="value"[^>]*>([^<]*)</text>',
                      _section(dom, "evaluation"), re.S)
    assert {(m, t): v for m, t, v in bars} == _expected_values(run)
    assert len(bars) == len(SCORES)
    for sid in ("funnel", "reasons", "lengths", "training", "evaluation"):
        assert "nothing to show" not in _section(dom, sid) and 'class="empty"' not in _section(dom, sid), sid

    shot = tmp_path / "report.png"
    subprocess.run(common + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
