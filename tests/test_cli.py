"""The command line: clear errors with exit 2 and no traceback, light imports, run skips done stages."""

import json
import os
import subprocess
import sys

import pytest

from distillkit import pipeline
from distillkit.config import load_recipe
from distillkit.errors import DistillkitError
from distillkit.pipeline import stage_config_hash
from distillkit.records import StageOutput, make_record, record_features


def dk(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "distillkit", *args], capture_output=True, text=True, cwd=cwd)


def test_help_and_validate_import_nothing_heavy(tmp_path):
    code = ("import sys\nfrom distillkit.cli import main\n"
            "for argv in (['--help'], ['validate']):\n"
            "    try: main(argv)\n    except SystemExit as e: assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'vllm', 'lm_eval', 'transformers', 'trl') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("content,expected", [
    ("name: x\ntrian: {}\n", "trian: unknown key; did you mean `train`?"),
    ("name: [\n", "invalid YAML at line 2"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_user_mistakes_exit_2_without_traceback(tmp_path, content, expected):
    path = tmp_path / "r.yaml"
    path.write_text(content)
    res = dk("validate", str(path))
    assert res.returncode == 2
    assert expected in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_missing_file_and_bad_override_exit_2():
    res = dk("validate", "nope.yaml")
    assert res.returncode == 2 and "recipe 'nope.yaml' not found" in res.stderr
    res = dk("validate", "quickstart", "train.lora.r=zero")
    assert res.returncode == 2 and "train.lora.r='zero'" in res.stderr
    res = dk("validate", "quickstart", "notanoverride")
    assert res.returncode == 2 and "expected KEY=VALUE" in res.stderr
    assert "Traceback" not in res.stderr


def test_validate_builtin_default_ok():
    res = dk("validate")
    assert res.returncode == 0 and "recipe 'quickstart' is valid" in res.stdout


def test_inspect_summarizes_counts_lengths_and_reasons(tmp_path):
    out = StageOutput(tmp_path / "filter", "filter", "h")
    out.begin()
    rows = [make_record(prompt_id=f"p{i // 2}", sample_index=i % 2, problem="q", completion_tokens=10 * (i + 1),
                        finish_reason="length" if i == 3 else "stop", source="arith",
                        verdicts=[{"verifier": "math", "passed": i % 2 == 0,
                                   "reason": "correct" if i % 2 == 0 else "wrong_answer"}])
            for i in range(4)]
    out.write_shard(0, rows, record_features())
    out.finish(counts={"records": 4})
    res = dk("inspect", str(tmp_path / "filter"), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["records"] == 4 and summary["prompts"] == 2 and summary["complete"]
    assert summary["finish_reasons"] == {"stop": 3, "length": 1}
    assert summary["rejection_reasons"] == {"math:wrong_answer": 2}
    assert summary["completion_tokens"]["max"] == 40.0
    res = dk("inspect", str(tmp_path / "nothing"))
    assert res.returncode == 2 and "no such folder" in res.stderr


def test_run_skips_stages_whose_manifest_matches(tmp_path, monkeypatch):
    cfg = load_recipe(None, [f"output_dir={tmp_path}/run", "stages=[generate, filter]"])
    calls = []

    def fake(stage):
        def run(cfg, overwrite=False):
            calls.append(stage)
            out = StageOutput(cfg.stage_dir(stage), stage, stage_config_hash(cfg, stage))
            out.begin(overwrite=overwrite)
            return out.finish(counts={"records": 0})
        return run

    monkeypatch.setattr(pipeline, "stage_function", fake)
    pipeline.run_pipeline(cfg)
    assert calls == ["generate", "filter"]
    pipeline.run_pipeline(cfg)
    assert calls == ["generate", "filter"]  # both up to date
    cfg.filter.selection.k = 3  # a changed config never silently replaces an output ...
    with pytest.raises(DistillkitError, match="--overwrite"):
        pipeline.run_pipeline(cfg)
    pipeline.run_pipeline(cfg, from_stage="filter")  # ... --from reruns that stage, generate stays
    assert calls == ["generate", "filter", "filter", "filter"]
    pipeline.run_pipeline(cfg, from_stage="generate")
    assert calls[-2:] == ["generate", "filter"]


def test_filter_warnings_are_printed_by_filter_and_run(tmp_path, monkeypatch, capsys):
    """`distillkit filter` and `distillkit run` print the filter's "could not judge" warnings (stderr)."""
    from distillkit import cli

    warning = "judge could not judge 3 of 3 records (100%: judge_unparseable 3); they were rejected"

    def fake(stage):
        def run(cfg, overwrite=False):
            out = StageOutput(cfg.stage_dir(stage), stage, stage_config_hash(cfg, stage))
            out.begin(overwrite=overwrite)
            stats = {"funnel": [], "reasons": {}, "warnings": [warning]} if stage == "filter" else {}
            return out.finish(counts={"records": 0}, stats=stats)
        return run

    monkeypatch.setattr(pipeline, "stage_function", fake)
    cli.run([f"output_dir={tmp_path}/run", "stages=[filter]"])
    assert f"warning: filter: {warning}" in " ".join(capsys.readouterr().err.split())
    cli.filter_([f"output_dir={tmp_path}/run", "stages=[filter]"])
    assert f"warning: filter: {warning}" in " ".join(capsys.readouterr().err.split())


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    # `kill PID` must run `finally` blocks (they shut the vLLM engine processes down).
    marker = tmp_path / "cleaned"
    code = f"""
import os, signal, sys
from distillkit import cli
cli._terminate_as_interrupt()
try:
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        import time; time.sleep(30)
    finally:
        open({str(marker)!r}, "w").write("yes")
except KeyboardInterrupt:
    sys.exit(130)
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 130 and marker.read_text() == "yes"


def test_an_interrupted_command_says_how_to_resume(monkeypatch, capsys):
    """Ctrl-C or `kill` inside a command (typer returns 130 for it rather than raising): one line, exit 130."""
    from distillkit import cli, pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(cli, "_preflight_for", lambda cfg, stages: None)
    monkeypatch.setattr(pipeline, "stage_function", lambda stage: interrupted)
    with pytest.raises(SystemExit) as e:
        cli.main(["filter"])
    err = capsys.readouterr().err
    assert e.value.code == 130 and "interrupted; rerun the same command to resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_quickstart_shrunk_runs_every_stage_and_writes_the_report(tmp_path):
    """The README's first command on a tiny budget: the real recipe, SmolLM2 through vLLM, every stage."""
    pytest.importorskip("vllm")
    pytest.importorskip("lm_eval")
    run_dir = tmp_path / "qs"
    res = dk("run", "quickstart", f"output_dir={run_dir}", "generate.prompts.builtin_args.num=8",
             "generate.sampling.n=8", "generate.sampling.max_tokens=48", "generate.shard_size=4",
             "train.num_train_epochs=1", "evaluate.limit=4", "evaluate.num_samples=1",
             "evaluate.max_gen_toks=32", "evaluate.backend=hf")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for stage in ("generate", "filter", "train", "evaluate", "publish"):
        assert (run_dir / stage / "manifest.json").exists(), stage
    kept = json.loads((run_dir / "filter" / "manifest.json").read_text())["counts"]["kept"]
    assert kept > 0
    assert "Constant-answer baseline" in res.stdout and "student (after)" in res.stdout
    assert (run_dir / "report.html").exists() and f"report -> {run_dir / 'report.html'}" in res.stdout.replace("\n", "")


def test_quiet_libraries_drops_only_the_listed_noise(caplog, monkeypatch):
    import logging
    import warnings

    from distillkit import logs

    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # a log file
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # a user's own setting wins
    loggers = [logging.getLogger(name) for name, *_ in logs.QUIET_LOGS]
    before = [list(lg.filters) for lg in loggers]
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            logs.quiet_libraries()
            logs.quiet_libraries()  # idempotent: one filter per logger
            warnings.warn("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning)
            warnings.warn("something else is deprecated", FutureWarning)
        assert [str(w.message) for w in seen] == ["something else is deprecated"]
        caplog.set_level(logging.WARNING)
        logging.getLogger("lm_eval.evaluator").warning("generation_kwargs: %s specified through cli", {"t": 1})
        logging.getLogger("lm_eval.evaluator").warning("Context length exceeded")  # a real problem stays
        logging.getLogger("lm_eval.api.task").warning("x: Custom kwargs can be passed to `--metadata` in console")
        assert [r.getMessage() for r in caplog.records] == ["Context length exceeded"]
        assert all(sum(isinstance(f, logs._DropKnownNoise) for f in lg.filters) == 1 for lg in loggers)
        assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR" and os.environ["TORCH_CPP_LOG_LEVEL"] == "INFO"
        assert os.environ["TQDM_MININTERVAL"] == "30"
    finally:
        for lg, filters in zip(loggers, before):
            lg.filters[:] = filters
