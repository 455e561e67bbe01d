"""Checks of `evaluate.tasks` before any model is loaded: the name exists, its dataset can be read.

    task_name      a name neither distillkit's tasks, `evaluate.include_path` nor lm-eval defines
    task_dataset   local data files missing or missing a column the task reads; a Hub dataset that is gated
                   (no token, or terms not accepted), does not exist, or lacks a column the task reads

Task configs are read from their YAML (`include:` resolved, `!function` left unresolved), never built:
building an lm-eval task downloads its dataset. A task says which columns it reads with
`metadata: {columns: [...]}` (distillkit's R1 tasks do); tasks that do not are checked for access only.
Hub checks need the network: with HF_HUB_OFFLINE set, or the Hub unreachable, they are reported as not
done (severity ok or warning), never as errors.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

LOCAL_BUILDERS = {"json", "csv", "parquet", "arrow", "text"}
NETWORK_FIX = "check the network or the proxy, or set HF_HUB_OFFLINE=1 with the dataset cached"
TASK_FIX = "correct the name in evaluate.tasks (local tasks: {names}; lm-eval's: `lm_eval ls tasks`)"

# (check, severity, message, fix): preflight wraps them as Findings
Result = tuple[str, str, str, str]


def _task_configs(tasks: list[str], include_path: str | None) -> tuple[dict[str, dict | None], list[Result]]:
    """{task: its YAML config (None for groups, tags and Python tasks)} and the results for unknown names.

    Names in distillkit's folder or `include_path` are read directly; only other names need lm-eval's index
    of its built-in tasks (~20 s on a small CPU)."""
    from distillkit.evaluate.harness import local_task_configs, make_task_manager, task_folders

    local = local_task_configs(task_folders(include_path))
    configs: dict[str, dict | None] = {name: local[name] for name in tasks if name in local}
    rest = [name for name in tasks if name not in local]
    if not rest:
        return configs, []
    from lm_eval.tasks._yaml_loader import load_yaml

    index = make_task_manager(tasks, include_path).task_index
    results: list[Result] = []
    for name in rest:
        entry = index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(index), n=3, cutoff=0.75)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            where = f"distillkit, lm-eval or {include_path}" if include_path else "distillkit or lm-eval"
            results.append(("task_name", "error", f"evaluate.tasks: {name!r} is not a task {where} defines.{hint}",
                            TASK_FIX.format(names=", ".join(sorted(local)))))
            continue
        cfg = None
        if entry.yaml_path is not None and getattr(entry.kind, "name", "") in ("TASK", "PY_TASK"):
            try:
                cfg = load_yaml(entry.yaml_path, resolve_func=False)
            except (OSError, ValueError) as e:
                results.append(("task_name", "error", f"evaluate.tasks: {name}: cannot read {entry.yaml_path}: {e}",
                                "fix the task YAML"))
        configs[name] = cfg
    return configs, results


def _columns_of_file(path: Path) -> set[str] | None:
    """Column names of a local data file (first row / header / schema), None when the format is unknown."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return set(next(csv.reader(f), []))
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
        try:
            row = json.loads(first) if first else {}
        except ValueError:  # a JSON array file: read it whole
            row = (json.loads(path.read_text()) or [{}])[0]
        return set(row) if isinstance(row, dict) else None
    return None


def _split_files(cfg: dict[str, Any]) -> list[str]:
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    split = cfg.get("test_split") or cfg.get("validation_split") or "test"
    if isinstance(data_files, dict):
        data_files = data_files.get(split) or next(iter(data_files.values()), None)
    if isinstance(data_files, str):
        return [data_files]
    return list(data_files or [])


def _check_local(name: str, cfg: dict[str, Any], columns: list[str]) -> list[Result]:
    files = _split_files(cfg)
    if not files:
        return [("task_dataset", "error", f"evaluate.tasks: {name} reads the {cfg.get('dataset_path')!r} builder "
                 "but names no dataset_kwargs.data_files", "add dataset_kwargs: {data_files: {SPLIT: PATH}} to the task")]
    out: list[Result] = []
    for file in files:
        path = Path(file).expanduser()
        if not path.exists():
            out.append(("task_dataset", "error", f"evaluate.tasks: {name} reads {path}, which does not exist",
                        "fix dataset_kwargs.data_files in the task YAML"))
            continue
        have = _columns_of_file(path)
        missing = [c for c in columns if have is not None and c not in have]
        if missing:
            out.append(("task_dataset", "error", f"evaluate.tasks: {name}: {path} has no column "
                        f"{', '.join(map(repr, missing))} (it has {sorted(have)[:12]})",
                        "rename the columns to the layout of the task's Hub dataset"))
    return out or [("task_dataset", "ok", f"{name}: {', '.join(files)} readable"
                    + (f" with columns {columns}" if columns else ""), "")]


def _hub_features(info, config_name: str | None) -> set[str] | None:
    """Column names the dataset card declares for `config_name` (None when it declares none)."""
    card = getattr(info, "card_data", None)
    declared = card.get("dataset_info") if card is not None else None
    if isinstance(declared, dict):
        declared = [declared]
    for item in declared or []:
        if item.get("config_name", "default") == (config_name or "default") and item.get("features"):
            return {f["name"] for f in item["features"] if isinstance(f, dict) and "name" in f}
    return None


def _check_hub(name: str, cfg: dict[str, Any], columns: list[str], api_factory: Callable,
               unreachable: list[str]) -> list[Result]:
    """`unreachable` collects the reason once the Hub could not be reached: later tasks are not tried again
    (a blackholed network costs a timeout per request)."""
    from distillkit.http import hub_offline

    repo = cfg["dataset_path"]
    if unreachable:
        return [("task_dataset", "warning", f"{name}: access to {repo} not checked, network unreachable "
                 f"({unreachable[0]})", NETWORK_FIX)]
    if hub_offline("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # what the datasets library reads
        return [("task_dataset", "ok", f"{name}: offline (HF_HUB_OFFLINE): access to {repo} not checked; "
                 "lm-eval reads it from the local cache", "")]
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    api = api_factory()
    url = f"https://huggingface.co/datasets/{repo}"
    try:
        info = api.dataset_info(repo, expand=["cardData", "gated"])
        if getattr(info, "gated", False):
            api.auth_check(repo, repo_type="dataset")  # raises GatedRepoError without access
    except GatedRepoError:
        return [("task_dataset", "error", f"evaluate.tasks: {name} reads {repo}, a gated dataset this machine "
                 "has no access to", f"accept its terms at {url} and log in (`huggingface-cli login` or HF_TOKEN), "
                 f"or drop {name} from evaluate.tasks")]
    except RepositoryNotFoundError:
        return [("task_dataset", "error", f"evaluate.tasks: {name} reads {repo}, which the Hub does not have "
                 "(or keeps private from this token)", "fix dataset_path in the task YAML, or log in")]
    except Exception as e:  # no network, a dead proxy, the Hub down: not checked, not an error of the recipe
        from distillkit.faults import network_reason

        reason = network_reason(e)
        if reason is None and not isinstance(e, (HfHubHTTPError, OSError)):
            raise
        unreachable.append(reason[0] if reason else str(e).splitlines()[0][:200])
        return [("task_dataset", "warning", f"{name}: access to {repo} not checked, network unreachable "
                 f"({unreachable[0]})", NETWORK_FIX)]
    have = _hub_features(info, cfg.get("dataset_name"))
    missing = [c for c in columns if have is not None and c not in have]
    if missing:
        return [("task_dataset", "error", f"evaluate.tasks: {name}: {repo} ({cfg.get('dataset_name') or 'default'}) "
                 f"has no column {', '.join(map(repr, missing))}", "fix dataset_path/dataset_name in the task YAML")]
    return [("task_dataset", "ok", f"{name}: {repo} readable", "")]


def check_tasks(tasks: list[str], include_path: str | None = None, api_factory: Callable | None = None) -> list[Result]:
    """Results for every task of `evaluate.tasks`: names first, then each task's dataset."""
    if api_factory is None:
        def api_factory():
            from huggingface_hub import HfApi

            return HfApi()

    configs, results = _task_configs(tasks, include_path)
    unreachable: list[str] = []
    for name, cfg in configs.items():
        if not cfg or cfg.get("custom_dataset") or not cfg.get("dataset_path"):
            continue  # a group, a Python task, or data made by the task's own code
        columns = list((cfg.get("metadata") or {}).get("columns") or [])
        path = str(cfg["dataset_path"])
        if path in LOCAL_BUILDERS:
            results += _check_local(name, cfg, columns)
        elif Path(path).expanduser().exists():
            results.append(("task_dataset", "ok", f"{name}: local dataset folder {path}", ""))
        else:
            results += _check_hub(name, cfg, columns, api_factory, unreachable)
    return results
