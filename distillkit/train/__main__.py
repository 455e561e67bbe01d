"""Entry point of each process `accelerate launch` starts for the train stage (see `distillkit.train.launch`):

    python -m distillkit.train <run>/train/launch_recipe.json [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from distillkit.logs import quiet_libraries

    quiet_libraries()  # each process would print the libraries' import notices again (the parent's filters are not inherited)
    from distillkit.config import RecipeConfig
    from distillkit.faults import die_with_parent, reporting_to_parent
    from distillkit.train.distributed import cpu_fsdp_requested, enable_cpu_fsdp
    from distillkit.train.stage import run_train

    parser = argparse.ArgumentParser(description="one process of a distributed distillkit train stage")
    parser.add_argument("recipe", help="recipe JSON written by distillkit.train.launch.launch")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    die_with_parent(signal.SIGKILL)  # torchrun gives each rank a session of its own: go down with the launcher
    if cpu_fsdp_requested():  # FSDP2 on CPU processes (see distillkit.train.distributed)
        enable_cpu_fsdp()
    # A failure goes to the launching process as a report (it prints one message for all ranks), not as a traceback
    # per rank.
    with reporting_to_parent(f"rank {os.environ.get('RANK', '0')}"):
        cfg = RecipeConfig.model_validate_json(Path(args.recipe).read_text())
        run_train(cfg, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
