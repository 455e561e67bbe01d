"""Multi-process training: relaunch `run_train` under `accelerate launch` (DDP, FSDP, ZeRO-3).

`distillkit train` with `train.accelerate_config` or `train.num_processes > 1` writes the validated
recipe to `<run>/train/launch_recipe.json` and runs

    accelerate launch [--config_file CFG] [--num_processes N] -m distillkit.train RECIPE [--overwrite]

Each process then runs `run_train` itself (`distillkit/train/__main__.py`; this module imports no stage code); Trainer/accelerate set up the process group from the
environment torchrun provides. On a machine without CUDA the processes use gloo on CPU: accelerate's
own CPU launcher needs `mpirun`, so distillkit launches with `--multi_gpu` (plain torchrun) and the
trainer asks for the CPU (`use_cpu=True`), which makes accelerate pick MULTI_CPU with gloo.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from distillkit.errors import DistillkitError

log = logging.getLogger(__name__)

RECIPE_FILE = "launch_recipe.json"


def in_distributed_child() -> bool:
    """True inside a process started by accelerate/torchrun (they set these variables)."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def wants_launch(train_cfg) -> bool:
    return train_cfg.accelerate_config is not None or (train_cfg.num_processes or 1) > 1


def launch_command(train_cfg, recipe_path: str | os.PathLike, overwrite: bool, port: int | None = None) -> list[str]:
    """The `accelerate launch` command line for this recipe."""
    import torch

    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if train_cfg.accelerate_config:
        if not Path(train_cfg.accelerate_config).exists():
            raise DistillkitError(f"train.accelerate_config={train_cfg.accelerate_config!r}: no such file")
        cmd += ["--config_file", str(train_cfg.accelerate_config)]
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


def launch(cfg, overwrite: bool = False):
    """Run the train stage in `num_processes` processes; returns the manifest the main process wrote."""
    from distillkit.records import atomic_write_text, read_manifest

    out = cfg.stage_dir("train")
    out.mkdir(parents=True, exist_ok=True)
    recipe_path = out / RECIPE_FILE
    atomic_write_text(recipe_path, cfg.model_dump_json(indent=2))
    cmd = launch_command(cfg.train, recipe_path, overwrite, port=_free_port())
    log.info("launching: %s", " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise DistillkitError(f"distributed training failed (exit {result.returncode}); command: {' '.join(cmd)}")
    manifest = read_manifest(out)
    if manifest is None:
        raise DistillkitError(f"distributed training finished without writing {out}/manifest.json")
    return manifest
