"""The notebooks run top to bottom (nbclient): the walkthrough, then the run reader on its output."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def _execute(name: str, cwd: Path, env: dict, monkeypatch) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.slow
def test_walkthrough_then_reader(tmp_path, monkeypatch):
    nb1 = _execute("01_walkthrough.ipynb", tmp_path, {"DISTILLKIT_NOTEBOOK_DIR": str(tmp_path)}, monkeypatch)
    out1 = _text(nb1)
    assert "up to date:" in out1 and "report:" in out1
    assert (tmp_path / "run" / "report.html").exists()
    nb2 = _execute("02_read_a_run.ipynb", tmp_path, {"DISTILLKIT_RUN_DIR": str(tmp_path / "run")}, monkeypatch)
    out2 = _text(nb2)
    assert "generated 12 samples" in out2
    assert "input: 12" in out2.replace("  ", " ").replace("  ", " ")
    svgs = [o for c in nb2.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/svg+xml" in o.get("data", {})]
    assert len(svgs) == 3  # funnel, reasons, lengths
