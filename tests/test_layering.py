"""The layer contract of pyproject.toml ([tool.importlinter], README "Architecture"): checked here, so the test suite
(and CI) fails on a stage importing another stage, an import from a lower layer up, or an import cycle.

import-linter reads every import statement, inside functions too. It sees only folders that are packages: a test
below fails for a .py file it cannot see, and another proves that a bad import does break the contract.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the `lint-imports` command, run by this interpreter (import-linter comes with the dev extra)
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-cache"]


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package and pyproject.toml under `root` (it puts its working directory first on the
    import path, so the distillkit checked is the one under `root`)."""
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, f"lint-imports found imports that break the layers:\n{result.stdout}{result.stderr}"
    assert "3 kept, 0 broken" in result.stdout


def test_every_module_is_seen_by_the_contract():
    """A .py file in a folder without __init__.py is not in import-linter's graph: its imports go unchecked."""
    import grimp

    graph = grimp.build_graph("distillkit", cache_dir=None)
    unseen = []
    for path in sorted((ROOT / "distillkit").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in graph.modules:
            unseen.append(str(path.relative_to(ROOT)))
    assert not unseen, f"add an empty __init__.py to the folders of {unseen}: the layer contract cannot see them"


def test_no_import_cycles_parent_packages_included():
    """acyclic_siblings compares siblings only; a package's __init__ and its own submodules can close a cycle too."""
    import grimp

    graph = grimp.build_graph("distillkit", cache_dir=None)
    cycles = sorted((a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                    if graph.chain_exists(importer=b, imported=a))
    assert not cycles, f"import cycles (importer, imported): {cycles}"


@pytest.mark.parametrize("module, bad_import, reported", [
    # one stage importing another, inside a function (deferred imports count)
    ("generate/stage.py", "from distillkit.filter.stage import check_kept", "distillkit.generate.stage -> distillkit.filter.stage"),
    # a stage importing the layer above it
    ("train/data.py", "from distillkit.pipeline import run_pipeline", "distillkit.train.data -> distillkit.pipeline"),
    # the floor importing a stage
    ("verify/chain.py", "from distillkit.filter.selection import select", "distillkit.verify.chain -> distillkit.filter.selection"),
    # a cycle between two modules of one row (records may import stage_hash's row, but not in a circle)
    ("records/manifest.py", "from distillkit.stage_hash import stage_config_hash", ".stage_hash -> .records"),
])
def test_a_bad_import_breaks_the_contract(tmp_path, module, bad_import, reported):
    """The check cannot pass silently: one bad import added to a copy of the package fails it, naming the line."""
    shutil.copytree(ROOT / "distillkit", tmp_path / "distillkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "distillkit" / module, "a") as f:
        f.write(f"\n\ndef _layering_test():\n    {bad_import}  # noqa: F401\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BROKEN" in result.stdout and reported in result.stdout, result.stdout
