"""Multi-process training: relaunch `run_train` under `accelerate launch` (DDP, FSDP, ZeRO-3).

`distillkit train` with `train.accelerate_config` or `train.num_processes > 1` writes the validated
recipe to `<run>/train/launch_recipe.json` and runs

    accelerate launch [--config_file CFG] [--num_processes N] -m distillkit.train RECIPE [--overwrite]

Each process then runs `run_train` itself (`distillkit/train/__main__.py`; this module imports no stage code); Trainer/accelerate set up the process group from the
environment torchrun provides. On a machine without CUDA the processes use gloo on CPU: accelerate's
own CPU launcher needs `mpirun`, so distillkit launches with `--multi_gpu` (plain torchrun) and the
trainer asks for the CPU (`use_cpu=True`), which makes accelerate pick MULTI_CPU with gloo. An FSDP config runs
as FSDP2 there too (`cpu_form` + distillkit.train.distributed), and a config that cannot run as it says on this
machine (`distributed_problems`) stops before anything is launched. The ranks report a failure to this process
(distillkit.faults), which prints it once; the launcher's stderr is kept in train/launch.log.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from distillkit.errors import DistillkitError
from distillkit.faults import REPORTS_ENV, raise_from_children

log = logging.getLogger(__name__)

RECIPE_FILE = "launch_recipe.json"
LAUNCH_LOG = "launch.log"


def in_distributed_child() -> bool:
    """True inside a process started by accelerate/torchrun (they set these variables)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def wants_launch(train_cfg) -> bool:
    return train_cfg.accelerate_config is not None or (train_cfg.num_processes or 1) > 1


def read_accelerate_config(path: str | os.PathLike) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DistillkitError(f"train.accelerate_config={str(path)!r}: no such file") from None
    except (OSError, yaml.YAMLError) as e:
        raise DistillkitError(f"train.accelerate_config={str(path)!r}: cannot read it as YAML ({e})") from None
    if not isinstance(data, dict):
        raise DistillkitError(f"train.accelerate_config={str(path)!r}: expected an accelerate config (a mapping)")
    return data


def distributed_problems(train_cfg, has_gpu: bool) -> list[tuple[str, str]]:
    """(problem, fix) for each reason the accelerate config cannot run as it says on this machine (none when it can):
    distillkit never lets it fall back to something else silently."""
    if not train_cfg.accelerate_config:
        return []
    data = read_accelerate_config(train_cfg.accelerate_config)
    kind = str(data.get("distributed_type", "NO")).upper()
    where = f"train.accelerate_config={train_cfg.accelerate_config}"
    problems = []
    if kind == "DEEPSPEED":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            problems.append((f"{where} asks for DeepSpeed, which is not installed",
                             "use recipes/accelerate/fsdp.yaml (FSDP2, the multi-GPU path distillkit tests), or "
                             "`pip install deepspeed` on a GPU machine"))
        if not has_gpu:
            problems.append((f"{where} asks for DeepSpeed, which distillkit runs on GPUs only",
                             "on CPU processes use recipes/accelerate/fsdp.yaml (FSDP2 over gloo)"))
    if kind == "FSDP" and not has_gpu:
        version = int((data.get("fsdp_config") or {}).get("fsdp_version", 1))
        if version != 2:
            problems.append((f"{where} asks for FSDP version {version}; on CPU processes only FSDP2 runs (PyTorch's "
                             "FSDP1 needs a GPU)", "set fsdp_config.fsdp_version: 2"))
    return problems


def cpu_form(config_path: str | os.PathLike, folder: Path) -> Path:
    """The accelerate config as CPU processes run it: FSDP2 over gloo without mixed precision (CPU autocast is
    `train.bf16`'s business, as in a single-process run). Written beside the run's launch recipe."""
    import yaml

    from distillkit.records import atomic_write_text

    data = read_accelerate_config(config_path)
    data["mixed_precision"] = "no"
    data["use_cpu"] = False  # `--cpu` would launch a single process
    path = folder / "accelerate_cpu.yaml"
    atomic_write_text(path, "# written by distillkit: " + str(config_path) + " for CPU processes\n"
                      + yaml.safe_dump(data, sort_keys=True))
    return path


def launch_command(train_cfg, recipe_path: str | os.PathLike, overwrite: bool, port: int | None = None,
                   config_file: str | os.PathLike | None = None) -> list[str]:
    """The `accelerate launch` command line for this recipe (`config_file`: the accelerate config to pass, by
    default `train.accelerate_config`)."""
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if train_cfg.accelerate_config:
        if not Path(train_cfg.accelerate_config).exists():
            raise DistillkitError(f"train.accelerate_config={train_cfg.accelerate_config!r}: no such file")
        cmd += ["--config_file", str(config_file or train_cfg.accelerate_config)]
    else:
        # No config: plain data parallel over num_processes (torchrun underneath; gloo on CPU).
        cmd += ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no",
                "--mixed_precision", "no" if not torch.cuda.is_available() else "bf16"]
    if train_cfg.num_processes:
        cmd += ["--num_processes", str(train_cfg.num_processes)]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    cmd += ["-m", "distillkit.train", str(recipe_path)]
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_launcher(cmd: list[str], env: dict, reports: str, log_path: Path) -> int:
    """Run the launcher with its stderr copied to `log_path` and to ours, except once a rank has reported a failure:
    what follows is the launcher's own account of it (torchrun's ChildFailedError traceback, SIGTERMs to the other
    ranks), which the one message distillkit prints replaces. All of it stays in `log_path`."""
    import contextlib

    from distillkit.faults import die_with_parent

    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                            preexec_fn=die_with_parent)  # killed with distillkit, even by SIGKILL
    log_file = None
    with contextlib.suppress(OSError):
        log_file = open(log_path, "a", buffering=1)
    try:
        for line in proc.stderr:
            if log_file is not None:
                with contextlib.suppress(OSError):  # a full disk must not hide the output from the terminal too
                    log_file.write(line)
            if not os.listdir(reports):
                sys.stderr.write(line)
        return proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    finally:
        if log_file is not None:
            with contextlib.suppress(OSError):
                log_file.close()


def launch(cfg, overwrite: bool = False):
    """Run the train stage in `num_processes` processes; returns the manifest the main process wrote."""
    import torch

    from distillkit.faults import read_reports
    from distillkit.records import atomic_write_text, read_manifest
    from distillkit.train.distributed import CPU_FSDP_ENV

    out = cfg.stage_dir("train")
    out.mkdir(parents=True, exist_ok=True)
    has_gpu = torch.cuda.is_available()
    problems = distributed_problems(cfg.train, has_gpu)
    if problems:
        raise DistillkitError("\n".join(f"{problem}; fix: {fix}" for problem, fix in problems))
    recipe_path = out / RECIPE_FILE
    atomic_write_text(recipe_path, cfg.model_dump_json(indent=2))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    config_file = None
    if cfg.train.accelerate_config and not has_gpu:
        kind = str(read_accelerate_config(cfg.train.accelerate_config).get("distributed_type", "NO")).upper()
        if kind == "FSDP":
            config_file = cpu_form(cfg.train.accelerate_config, out)
            env[CPU_FSDP_ENV] = "1"
    cmd = launch_command(cfg.train, recipe_path, overwrite, port=_free_port(), config_file=config_file)
    log.info("launching: %s", " ".join(cmd))
    with tempfile.TemporaryDirectory(prefix="distillkit-ranks-") as reports:
        env[REPORTS_ENV] = reports
        returncode = _run_launcher(cmd, env, reports, out / LAUNCH_LOG)
        if returncode != 0:  # the ranks that reported, else the launcher's own exit code
            failed = {r["name"]: 1 for r in read_reports(reports)} or {"the launcher": returncode}
            raise_from_children("train", failed, reports)
    manifest = read_manifest(out)
    if manifest is None:
        raise DistillkitError(f"distributed training finished without writing {out}/manifest.json")
    return manifest
