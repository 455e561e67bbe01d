"""User-facing errors: the CLI prints their message (no traceback) and exits 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class DistillkitError(Exception):
    """A mistake the user can fix (bad input, missing file, missing extra). Exit code 2."""


class ConfigError(DistillkitError):
    """A recipe that does not validate; `problems` holds one line per mistake."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        head = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}{where}:"
        super().__init__("\n".join([head, *("  - " + p for p in problems)]))


class MissingExtraError(DistillkitError):
    """An optional dependency of one stage is not installed."""


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise a MissingExtraError naming the extra that provides it.

    Heavy stacks (torch, vllm, lm_eval) are imported through this at call time so that the CLI's
    help and `validate` stay light and a missing extra reads as an install hint, not a traceback.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:  # ModuleNotFoundError or a broken install underneath
        what = purpose or f"this stage needs `{module}`"
        raise MissingExtraError(
            f"{what}, which is not installed ({e}). Install it with: pip install 'distillkit[{extra}]'"
        ) from e
