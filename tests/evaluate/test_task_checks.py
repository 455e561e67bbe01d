"""`evaluate.tasks` checked before any model loads: unknown names, local files and columns, gated Hub datasets."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from distillkit.evaluate.harness import LOCAL_TASKS_DIR, read_task_yaml
from distillkit.evaluate.task_checks import check_tasks
from distillkit.preflight import check_eval_tasks

R1 = LOCAL_TASKS_DIR / "r1"


def _by_task(results):
    return {(check, msg.split(":")[1].strip().split(" ")[0] if msg.startswith("evaluate.tasks") else msg.split(":")[0]):
            (severity, msg, fix) for check, severity, msg, fix in results}


def _override(folder, task, builder, data_file, split):
    (folder / f"{task}.yaml").write_text(json.dumps({
        "include": str(R1 / f"{task}.yaml"), "task": task, "dataset_path": builder, "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file)}}}))


def test_shipped_task_yamls_read_as_lm_eval_reads_them():
    cfg = read_task_yaml(R1 / "r1_math500.yaml")
    assert (cfg["dataset_path"], cfg["test_split"], cfg["metadata"]["columns"]) == (
        "HuggingFaceH4/MATH-500", "test", ["problem", "answer"])


def test_unknown_name_is_an_error_with_the_close_names(monkeypatch):
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager
    # indexing lm-eval's thousands of built-ins takes ~20 s; the suggestion comes from distillkit's own names
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kw: real(**{**kw, "include_defaults": False}))
    results = check_tasks(["r1_aime2", "distillkit_arith"])
    assert [(c, s) for c, s, _, _ in results] == [("task_name", "error")]
    assert "'r1_aime2' is not a task distillkit or lm-eval defines" in results[0][2]
    assert "Did you mean" in results[0][2] and "r1_aime24" in results[0][2]


def test_local_data_files_missing_or_without_the_tasks_columns(tmp_path):
    good = tmp_path / "math.jsonl"
    good.write_text(json.dumps({"problem": "1+1?", "answer": "2", "level": 1}) + "\n")
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({"question": "1+1?", "final": "2"}) + "\n")
    _override(tmp_path, "r1_math500", "json", good, "test")
    _override(tmp_path, "r1_aime24", "json", renamed, "train")
    _override(tmp_path, "r1_aime25", "parquet", tmp_path / "nope.parquet", "train")
    results = _by_task(check_tasks(["r1_math500", "r1_aime24", "r1_aime25"], str(tmp_path)))
    assert results[("task_dataset", "r1_math500")][0] == "ok"
    severity, msg, fix = results[("task_dataset", "r1_aime24")]
    assert severity == "error" and "no column 'problem', 'answer'" in msg and str(renamed) in msg
    severity, msg, _ = results[("task_dataset", "r1_aime25")]
    assert severity == "error" and "nope.parquet, which does not exist" in msg


def test_gpqa_csv_columns_are_read_from_the_header(tmp_path):
    data = tmp_path / "gpqa.csv"
    data.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Record ID\nq,a,b,c,rec1\n")
    _override(tmp_path, "r1_gpqa_diamond", "csv", data, "train")
    [(check, severity, msg, _)] = check_tasks(["r1_gpqa_diamond"], str(tmp_path))
    assert (check, severity) == ("task_dataset", "error") and "no column 'Incorrect Answer 3'" in msg


class FakeHub:
    """HfApi's dataset_info/auth_check for a few repos, as the Hub answers them."""

    def __init__(self, gated=(), granted=(), missing=(), down=False, features=None):
        self.gated, self.granted, self.missing, self.down, self.features = set(gated), set(granted), set(missing), down, features or {}

    @staticmethod
    def _response(status):
        import requests

        r = requests.Response()
        r.status_code = status
        r.request = requests.Request("GET", "https://hub.example/api").prepare()
        return r

    def dataset_info(self, repo, expand=None):
        from huggingface_hub.errors import RepositoryNotFoundError

        if self.down:
            raise OSError("Connection refused")
        if repo in self.missing:
            raise RepositoryNotFoundError("404 Client Error", response=self._response(404))
        card = {"dataset_info": [{"config_name": name, "features": [{"name": c} for c in cols]}
                                 for name, cols in self.features.get(repo, {}).items()]}
        return SimpleNamespace(gated="manual" if repo in self.gated else False, card_data=card)

    def auth_check(self, repo, repo_type=None):
        from huggingface_hub.errors import GatedRepoError

        if repo in self.gated and repo not in self.granted:
            raise GatedRepoError("403 Client Error: gated", response=self._response(403))


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def test_gated_dataset_without_access_is_an_error_naming_the_fix(online):
    hub = FakeHub(gated={"Idavidrein/gpqa"})
    results = _by_task(check_tasks(["r1_gpqa_diamond", "r1_math500"], api_factory=lambda: hub))
    severity, msg, fix = results[("task_dataset", "r1_gpqa_diamond")]
    assert severity == "error" and "gated" in msg
    assert "huggingface.co/datasets/Idavidrein/gpqa" in fix and "huggingface-cli login" in fix
    assert results[("task_dataset", "r1_math500")][0] == "ok"
    hub.granted.add("Idavidrein/gpqa")
    assert all(s == "ok" for _, s, _, _ in check_tasks(["r1_gpqa_diamond"], api_factory=lambda: hub))


def test_hub_dataset_missing_or_without_columns_or_unreachable(online):
    hub = FakeHub(missing={"yentinglin/aime_2025"},
                  features={"HuggingFaceH4/MATH-500": {"default": ["problem", "solution", "level"]}})
    results = _by_task(check_tasks(["r1_aime25", "r1_math500"], api_factory=lambda: hub))
    assert results[("task_dataset", "r1_aime25")][0] == "error"
    severity, msg, _ = results[("task_dataset", "r1_math500")]
    assert severity == "error" and "no column 'answer'" in msg
    [(_, severity, msg, _)] = check_tasks(["r1_aime24"], api_factory=lambda: FakeHub(down=True))
    assert severity == "warning" and "not checked, network unreachable" in msg  # no network: not an error


def test_offline_checks_nothing_on_the_hub_and_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub():
        raise AssertionError("the Hub was asked while offline")

    [(check, severity, msg, _)] = check_tasks(["r1_aime24"], api_factory=no_hub)
    assert (check, severity) == ("task_dataset", "ok") and "not checked" in msg


def test_preflight_and_validate_stop_on_a_misspelt_task(tmp_path):
    from distillkit.config import load_recipe

    cfg = load_recipe("quickstart", ["evaluate.tasks=[distillkit_arith]", f"evaluate.include_path={tmp_path}"])
    assert [f for f in check_eval_tasks(cfg.evaluate) if f.severity != "ok"] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"include": str(R1 / "r1_math500.yaml"), "task": "my_math", "dataset_path": "json",
                               "dataset_kwargs": {"data_files": {"test": str(tmp_path / "gone.jsonl")}}}))
    res = subprocess.run([sys.executable, "-m", "distillkit", "validate", "quickstart",
                          "evaluate.tasks=[my_math]", f"evaluate.include_path={tmp_path}"],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "my_math reads" in res.stderr and "gone.jsonl, which does not exist" in res.stderr
    assert "Traceback" not in res.stderr
