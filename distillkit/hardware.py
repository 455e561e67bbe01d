"""What the machine can do, for choices that depend on it (device, dtype on CPU)."""

from __future__ import annotations

from pathlib import Path


def cpu_has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this x86 CPU has native bf16 math (AVX512-BF16 or AMX); without it bf16 is emulated."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def torch_device() -> str:
    """"cuda" when torch sees a GPU, else "cpu" (also without torch installed)."""
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
