"""Module paths that moved in the re-layout (issue 32) keep working for one release, with a DeprecationWarning."""

import importlib
import sys
from importlib.metadata import EntryPoint

import pytest


def _fresh(package: str) -> None:
    """Forget the alias package and its submodule aliases, so importing it again warns again."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


@pytest.mark.parametrize("name", ["base", "code", "format", "judge", "math", "readability"])
def test_old_verifier_paths_give_the_moved_modules(name):
    _fresh("distillkit.filter.verifiers")
    with pytest.warns(DeprecationWarning, match="distillkit.verify.verifiers"):
        old = importlib.import_module(f"distillkit.filter.verifiers.{name}")
    assert old is importlib.import_module(f"distillkit.verify.verifiers.{name}")  # one module: patches apply to both


def test_old_verifier_names_import():
    from distillkit.filter.verifiers.base import Verdict
    from distillkit.filter.verifiers.math import verify_math_answer

    assert verify_math_answer("\\boxed{7}", "7").passed and Verdict is not None


def test_the_old_vllm_plugin_entry_point_loads():
    """An install made before the move names this entry point until it is reinstalled: vLLM must still load it."""
    _fresh("distillkit.generate.backends")
    old = EntryPoint(name="distillkit_fast_top_p", value="distillkit.generate.backends.fast_top_p:install",
                     group="vllm.general_plugins")
    with pytest.warns(DeprecationWarning, match="distillkit.engines"):
        install = old.load()
    assert install is importlib.import_module("distillkit.engines.fast_top_p").install
