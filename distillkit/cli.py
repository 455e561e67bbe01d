"""The `distillkit` command: parses arguments, calls a stage, prints. Stages are imported lazily.

Every stage command takes `[RECIPE] [KEY=VALUE ...]`: a recipe file (or a built-in name; default
`quickstart`) followed by dotted overrides such as `train.lora.r=32`.
A user mistake prints one message and exits 2; only bugs show a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distillkit.errors import DistillkitError
from distillkit.logs import quiet_libraries

app = typer.Typer(
    name="distillkit",
    help="Distil a reasoning teacher into smaller students: generate -> filter -> train -> evaluate -> publish.\n\n"
         "Every stage command takes [RECIPE] [KEY=VALUE ...]; RECIPE defaults to the built-in offline quickstart.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

RecipeArgs = Annotated[Optional[list[str]], typer.Argument(
    metavar="[RECIPE] [KEY=VALUE]...",
    help="Recipe YAML (or built-in name, default: quickstart), then dotted overrides like train.lora.r=32.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Discard this stage's previous output and start over.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and the library messages hidden by default.")]


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("distillkit").setLevel(level)
    if verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")  # else TRL's import sets ERROR
    else:
        quiet_libraries()


def _load(args: list[str] | None):
    from distillkit.config import load_recipe

    args = list(args or [])
    recipe = None
    if args and "=" not in args[0]:
        recipe = args.pop(0)
    bad = [a for a in args if "=" not in a]
    if bad:
        raise DistillkitError(f"expected KEY=VALUE overrides after the recipe, got {bad}; "
                              "e.g. distillkit train recipes/quickstart.yaml train.lora.r=32")
    return load_recipe(recipe, args)


def _print_manifest(stage: str, manifest) -> None:
    table = Table(title=f"{stage}: {manifest.counts.get('records', '')} records".strip(), show_header=False)
    for key, value in manifest.counts.items():
        table.add_row(key, str(value))
    if "total_s" in manifest.timings:
        table.add_row("time", f"{manifest.timings['total_s']:.1f} s")
    out.print(table)


def _run_stage(stage: str, args: list[str] | None, overwrite: bool, verbose: bool, **kwargs) -> None:
    from distillkit.pipeline import stage_function

    _setup_logging(verbose)
    cfg = _load(args)
    _preflight_for(cfg, [stage])
    from distillkit.plan import warn_if_too_big

    warn_if_too_big(cfg, stage)
    from distillkit.faults import operation

    with operation(stage, writes_to=cfg.stage_dir(stage)):
        manifest = stage_function(stage)(cfg, overwrite=overwrite, **kwargs)
    if manifest is None:
        out.print(_SUBMITTED.format(stage=stage, folder=cfg.stage_dir(stage)))
        return
    _print_manifest(stage, manifest)
    out.print(f"[green]{stage} done[/] -> {cfg.stage_dir(stage)}")


_SUBMITTED = ("[yellow]{stage} submitted[/] to the scheduler; its output appears in {folder} when the jobs end "
              "(rerun the same command then: finished work is kept)")


def _preflight_for(cfg, stages: list[str]) -> None:
    """Stop before a stage starts when teacher/student tokenizers or templates, or evaluation tasks, would break it."""
    if not any(s in stages for s in ("generate", "train", "evaluate")):
        return
    try:
        from distillkit.preflight import preflight, raise_on_fatal
    except ImportError:
        return
    findings = preflight(cfg, stages=stages)
    for f in findings:
        if f.severity == "warning":
            _print_finding(f, err)
    raise_on_fatal(findings)


@app.command()
def validate(args: RecipeArgs = None) -> None:
    """Check a recipe: report every mistake (key path, bad value, fix) at once; exit 2 if any."""
    cfg = _load(args)
    if "evaluate" in cfg.stages:  # a task name or dataset that cannot work fails now, not after training
        from distillkit.preflight import check_eval_tasks, raise_on_fatal

        findings = check_eval_tasks(cfg.evaluate)
        for f in findings:
            if f.severity == "warning":
                _print_finding(f, err)
        raise_on_fatal(findings)
    out.print(f"[green]ok[/]: recipe {cfg.name!r} is valid; stages {cfg.stages}; output {cfg.run_dir}")


@app.command()
def generate(args: RecipeArgs = None, overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Sample R1-style traces from the teacher (resumes after a crash)."""
    _run_stage("generate", args, overwrite, verbose)


@app.command(name="filter")
def filter_(args: RecipeArgs = None, overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Verify traces and keep the correct, readable ones; print the funnel of rejection reasons."""
    _run_stage("filter", args, overwrite, verbose)
    try:
        from distillkit.filter.funnel import funnel_table

        cfg = _load(args)
        from distillkit.records import read_manifest

        manifest = read_manifest(cfg.stage_dir("filter"))
        if manifest is not None:
            out.print(funnel_table(manifest))
            _print_filter_warnings(manifest)
    except (ImportError, AttributeError):
        return
    if manifest is not None:
        from distillkit.filter.funnel import check_kept

        check_kept(manifest)


def _print_filter_warnings(manifest) -> None:
    """The filter's "could not judge" warnings (filter.warn_cannot_judge), on stderr."""
    for w in (manifest.stats or {}).get("warnings") or []:
        err.print(f"[yellow]warning[/]: filter: {w}")


@app.command()
def score(args: RecipeArgs = None, overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Add the teacher's top-k logprobs (soft labels) to existing traces: this run's, another run's, or a chat dataset."""
    _run_stage("score", args, overwrite, verbose)


@app.command()
def train(args: RecipeArgs = None, overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Train the student on the kept traces (SFT, optional soft-label KD)."""
    _run_stage("train", args, overwrite, verbose)


@app.command()
def evaluate(args: RecipeArgs = None, overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Evaluate teacher and student with lm-eval (sampled pass@1 over k samples)."""
    _run_stage("evaluate", args, overwrite, verbose)
    comparison = _load(args).stage_dir("evaluate") / "comparison.md"
    if comparison.exists():
        out.print(comparison.read_text())


@app.command()
def publish(args: RecipeArgs = None, dry_run: Annotated[bool, typer.Option(
        "--dry-run/--push", help="--dry-run writes the folders it would upload; --push uploads.")] = True,
        overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Write model and dataset cards; upload to the Hugging Face Hub with --push."""
    _run_stage("publish", args, overwrite, verbose, dry_run=dry_run)


@app.command()
def run(args: RecipeArgs = None,
        from_stage: Annotated[Optional[str], typer.Option("--from", help="Rerun from this stage on.")] = None,
        overwrite: Overwrite = False, verbose: Verbose = False) -> None:
    """Run the recipe's stages in order, skipping those whose output matches the config; then write RUN_DIR/report.html."""
    from distillkit.pipeline import run_pipeline

    _setup_logging(verbose)
    cfg = _load(args)
    _preflight_for(cfg, list(cfg.stages))

    def on_stage(stage: str, status: str) -> None:
        if status == "skipped":
            out.print(f"[dim]{stage}: up to date, skipped[/]")
        elif status == "running":
            out.rule(f"[bold]{stage}")
        elif status == "submitted":
            out.print(_SUBMITTED.format(stage=stage, folder=cfg.stage_dir(stage)))

    manifests = run_pipeline(cfg, from_stage=from_stage, overwrite=overwrite, on_stage=on_stage)
    if any(s not in manifests for s in cfg.stages):  # a stage went to a scheduler; the rest waits for it
        return
    for stage, manifest in manifests.items():
        _print_manifest(stage, manifest)
        if stage == "filter":
            _print_filter_warnings(manifest)
    comparison = cfg.stage_dir("evaluate") / "comparison.md"
    if "evaluate" in manifests and comparison.exists():
        out.print(comparison.read_text())
    from distillkit.publish.report import build_report

    out.print(f"[green]report[/] -> {build_report(cfg.run_dir)}")
    out.print(f"[green]run complete[/] -> {cfg.run_dir}")


@app.command()
def compare(args: RecipeArgs = None,
            arm: Annotated[Optional[list[str]], typer.Option(
                "--arm", help='An arm: its name, then its overrides, e.g. --arm "kd train.kd.enabled=true" '
                              "(repeat for each arm; replaces the recipe's compare.arms). after=ARM starts each seed from "
                              "that arm's trained student (SFT, then on-policy).")] = None,
            seeds: Annotated[Optional[int], typer.Option("--seeds", help="Training seeds per arm (compare.seeds).")] = None,
            baseline: Annotated[Optional[str], typer.Option("--baseline", help="The arm the others are compared "
                                                                             "with (default: the first).")] = None,
            verbose: Verbose = False) -> None:
    """Train the recipe as arms x training seeds; each arm's pass@1 with a 95% interval (seed and question
    variance) and its difference from the baseline arm, paired by seed and question."""
    import shlex

    from distillkit.compare import run_compare
    from distillkit.config import parse_override, validate_recipe

    _setup_logging(verbose)
    cfg = _load(args)
    data = cfg.model_dump(mode="json")
    if arm:
        arms = {}
        for text in arm:
            name, *overrides = shlex.split(text) or [""]
            arms[name] = {".".join(map(str, keys)): value for keys, value in map(parse_override, overrides)}
        data["compare"]["arms"] = arms
    if seeds is not None:
        data["compare"]["seeds"] = seeds
    if baseline is not None:
        data["compare"]["baseline"] = baseline
    cfg = validate_recipe(data, source="distillkit compare")
    _preflight_for(cfg, [s for s in cfg.stages if s != "publish"])

    def on_run(name: str, seed: int, done: int, total: int, eta_s: float) -> None:
        eta = f", ETA {eta_s / 60:.0f} min" if done < total and eta_s else ""
        out.print(f"[dim]compare: {done}/{total} runs done ({name}, seed {seed}){eta}[/]")

    run_compare(cfg, on_run=on_run)
    folder = cfg.run_dir / "compare"
    out.print((folder / "comparison.md").read_text())
    out.print(f"[green]compare done[/] -> {folder}")


@app.command()
def inspect(folder: Annotated[str, typer.Argument(help="A stage output folder, e.g. runs/quickstart/filter")],
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False) -> None:
    """Summarize a stage output: counts, lengths, finish reasons, rejection reasons, soft-label bytes per token."""
    import json

    from distillkit.inspect import summarize_output

    summary = summarize_output(folder)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"{summary['folder']} ({summary['stage']}, "
                        f"{'complete' if summary['complete'] else 'INCOMPLETE: no manifest yet'})", show_header=False)
    for key in ("records", "prompts", "shards", "config_hash"):
        table.add_row(key, str(summary[key]))
    for key, value in summary["completion_tokens"].items():
        table.add_row(f"completion tokens {key}", str(value))
    if summary.get("soft_labels"):
        labels = summary["soft_labels"]
        kind = f"{labels['k']} draws per token" if labels["format"] == "sampled-v1" else f"top-{labels['k']}"
        table.add_row("soft labels", f"{kind}, {labels['format']}")
        table.add_row("soft-label bytes per token", str(labels["bytes_per_token"]))
    for name in ("finish_reasons", "sources", "counts"):
        for key, value in summary[name].items():
            table.add_row(f"{name.replace('_', ' ')}: {key}", str(value))
    out.print(table)
    reasons = summary.get("rejected", {}).get("rejection_reasons") or summary["rejection_reasons"]
    if reasons:
        rt = Table("verifier:reason", "rejected records", title="rejection reasons")
        for key, value in reasons.items():
            rt.add_row(key, str(value))
        out.print(rt)


@app.command()
def report(run_dir: Annotated[str, typer.Argument(help="A run folder (the recipe's output_dir), e.g. runs/quickstart")],
           output: Annotated[Optional[str], typer.Option("--output", "-o", help="HTML file to write "
                                                         "(default: RUN_DIR/report.html).")] = None) -> None:
    """Write one self-contained HTML page: funnel, reasons, lengths, loss curves, eval chart, samples."""
    from distillkit.publish.report import build_report

    path = build_report(run_dir, output)
    out.print(f"[green]report[/] -> {path}")


@app.command()
def plan(args: RecipeArgs = None,
         gpu_memory_gib: Annotated[Optional[float], typer.Option(
             "--gpu-memory", help="GiB of one GPU (default: the recipe's hardware.gpu_memory_gib).")] = None) -> None:
    """Estimate peak GPU memory of training and generation, and the soft labels' bytes per token; exit 1 when a
    stage will not fit."""
    from distillkit.plan import plan_recipe

    cfg = _load(args)
    if gpu_memory_gib:
        cfg.hardware.gpu_memory_gib = gpu_memory_gib
    result = plan_recipe(cfg)
    teachers = result.generate_teachers or {}
    parts = [("train", result.train)] + ([(f"generate, teacher {name}", n) for name, n in teachers.items()]
                                         if teachers else [("generate", result.generate)])
    for stage, numbers in parts:
        if numbers is None:
            continue
        table = Table("component", "GiB", title=f"{stage}: estimated peak per GPU "
                                                f"(target {result.gpu_memory_gib:g} GiB x {result.num_gpus})")
        for key, value in numbers.items():
            table.add_row(key, str(value))
        out.print(table)
    if result.soft_labels:
        table = Table("soft labels", "value", title="soft labels: bytes per generated token (disk: before zstd)")
        for key, value in result.soft_labels.items():
            table.add_row(key, str(value))
        out.print(table)
    for w in result.warnings:
        out.print(f"[yellow]warning[/] {escape(w)}")
    if result.warnings:
        raise typer.Exit(1)
    out.print("[green]fits[/]")


@app.command()
def preflight(args: RecipeArgs = None) -> None:
    """Check teacher and student tokenizers and chat templates before any stage runs."""
    from distillkit.preflight import preflight as run_preflight
    from distillkit.preflight import raise_on_fatal

    cfg = _load(args)
    findings = run_preflight(cfg, stages=list(cfg.stages))
    for f in findings:
        _print_finding(f, out)
    raise_on_fatal(findings)


def _print_finding(f, console) -> None:
    """A preflight finding, one entry per finding, wrapped to the terminal (80 columns when not a terminal)."""
    from distillkit.preflight import format_finding

    colors = {"error": "red", "warning": "yellow", "ok": "green"}
    text = format_finding(f, console.width if console.is_terminal else 80)
    head, _, rest = text.partition(" ")
    console.print(f"[{colors.get(f.severity, 'white')}]{escape(head)}[/] {escape(rest)}", highlight=False,
                  soft_wrap=True)


def _terminate_as_interrupt() -> None:
    """SIGTERM (`kill PID`, a scheduler's preemption) unwinds like Ctrl-C, so `finally` blocks run:
    the vLLM engine processes are shut down instead of outliving us, and finished shards stay."""
    import signal
    import threading

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


# Recent typer (0.29 here) vendors click as typer._click: its Exit, usage errors (unknown command or option) and
# Abort are not click's classes, and an uncaught usage error read as a distillkit bug. Catch both families.
_EXITS = (click.exceptions.Exit, typer.Exit)
_USAGE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
_ABORTS = (click.exceptions.Abort, typer.Abort)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear message and exit 2 for user mistakes, never a traceback for them."""
    command = typer.main.get_command(app)
    _terminate_as_interrupt()
    if not {"--verbose", "-v"} & set(sys.argv[1:] if argv is None else argv):
        quiet_libraries()  # before any command imports torch, vLLM or bitsandbytes (their notices are noise)
    try:
        code = command.main(args=argv, prog_name="distillkit", standalone_mode=False)
    except _EXITS as e:
        code = e.exit_code
    except _USAGE_ERRORS as e:  # unknown command or option, an option without its value
        e.show()
        code = 2
    except _ABORTS:  # end of input at a prompt: "interrupted ..." below
        code = 130
    except DistillkitError as e:  # ConfigError and EnvironmentFault included: one message each
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        code = 2
    except KeyboardInterrupt:  # outside a command (typer handles those)
        code = 130
    except Exception as e:  # noqa: BLE001 - the one place that decides: the machine's fault (2) or a bug (1)
        code = report_unexpected(e, verbose=bool({"--verbose", "-v"} & set(sys.argv[1:] if argv is None else argv)))
    if code == 130:  # typer turns Ctrl-C / SIGTERM inside a command into exit code 130 itself (returned, not raised)
        err.print("interrupted; rerun the same command to resume")
    sys.exit(code or 0)


def report_unexpected(e: BaseException, verbose: bool = False, console: Console | None = None) -> int:
    """A fault of the machine (network, disk, a killed process) as one message, exit 2; anything else is a bug:
    one line, the traceback in a file (and on screen with --verbose), exit 1."""
    import tempfile
    import traceback

    from distillkit.faults import explain

    console = console or err
    fault = explain(e)
    if fault is not None:
        console.print(f"[red]error:[/] {escape(str(fault))}", highlight=False, soft_wrap=True)
        return 2
    text = "".join(traceback.format_exception(e))
    if verbose:
        console.print(escape(text), highlight=False, soft_wrap=True)
    try:
        fd, path = tempfile.mkstemp(prefix="distillkit-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        where = f"the traceback is in {path}"
    except OSError:
        where = "rerun with --verbose for the traceback"
    console.print(f"[red]internal error[/] (a bug in distillkit, not in your recipe): {escape(type(e).__name__)}: "
                  f"{escape(str(e).splitlines()[0][:300] if str(e) else '')}\n  {where}; please report it with that "
                  "file and the command you ran", highlight=False, soft_wrap=True)
    return 1


if __name__ == "__main__":
    main()
