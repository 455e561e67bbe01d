"""What a multi-process training run really is, and FSDP2 on CPU processes.

accelerate turns a launch with an FSDP config into FSDP only on GPU-type machines; on CPU processes it silently runs
gloo DDP with full, unsharded parameters. distillkit makes FSDP2 run on CPU too (gloo; PyTorch's `fully_shard` works
there), so the sharded path that multi-GPU users run is the one the tests run:

  parent (`launch.cpu_form`)   writes a CPU form of the accelerate config (mixed precision off, FSDP version 2) and
                               sets DISTILLKIT_CPU_FSDP=1 for the ranks
  each rank (`enable_cpu_fsdp`) after accelerate builds its state as MULTI_CPU with an FSDP plugin, switches it to
                               FSDP (what accelerate does for MULTI_GPU): one attribute in AcceleratorState and
                               PartialState's shared state. Tested with accelerate 1.16 (tests/train/test_fsdp.py).

`describe(trainer)` is what the train manifest records: the distributed type, the number of
processes and the precision that actually ran, and whether the parameters were sharded.
"""

from __future__ import annotations

import os

CPU_FSDP_ENV = "DISTILLKIT_CPU_FSDP"


def enable_cpu_fsdp() -> None:
    """In a training rank on CPU: make accelerate's state FSDP where it would fall back to MULTI_CPU (idempotent)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_distillkit_cpu_fsdp", False):
        return

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init._distillkit_cpu_fsdp = True
    AcceleratorState.__init__ = init


def cpu_fsdp_requested() -> bool:
    return os.environ.get(CPU_FSDP_ENV) == "1"


def describe(trainer) -> dict:
    """{"type", "num_processes", "mixed_precision", "fsdp_version", "sharded"} of the run as it ran."""
    accelerator = trainer.accelerator
    state = accelerator.state
    kind = getattr(state.distributed_type, "value", str(state.distributed_type))
    out = {"type": kind, "num_processes": accelerator.num_processes,
           "mixed_precision": str(getattr(state, "mixed_precision", "no"))}
    plugin = getattr(state, "fsdp_plugin", None)
    if kind == "FSDP" and plugin is not None:
        out["fsdp_version"] = plugin.fsdp_version
    out["sharded"] = sharded_fraction(trainer.model)  # FSDP2 shards the model in place
    return out


def sharded_fraction(model) -> float:
    """Share of this rank's trainable parameters (by element count) held as a shard of a larger tensor (DTensor)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in trainable)
    sharded = sum(p.numel() for p in trainable if hasattr(p, "to_local") and p.to_local().numel() < p.numel())
    return round(sharded / total, 4) if total else 0.0
