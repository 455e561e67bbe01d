"""Faults of the machine, for real: a full disk (a small tmpfs), a read-only mount, a dead proxy, replicas that fail.

Each reaches the user as one message (operation, path or URL, fix) with exit 2 and no traceback, and the rerun after
the fault is fixed ends with the records an undisturbed run writes: nothing lost, nothing duplicated.
The tmpfs tests need root (CI runs as root); elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillkit.cli import main
from distillkit.config import validate_recipe
from distillkit.records import list_shards, read_records

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root")


def generate_recipe(model, out) -> dict:
    return {"name": "faults", "output_dir": str(out), "stages": ["generate"],
            "generate": {"teacher": {"model": str(model), "backend": "transformers", "vllm": {"dtype": "float32"}},
                         "prompts": {"builtin": "arith", "builtin_args": {"num": 8}},
                         "sampling": {"n": 2, "max_tokens": 12, "topk_logprobs": 5, "seed": 7}, "shard_size": 2}}


def write_recipe(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    captured = capsys.readouterr()
    return e.value.code, captured.out + captured.err


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, *options: str):
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(folder)],
                   check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """A file taking all of `folder`'s free space but `leave_bytes`."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def rows_by_id(folder) -> dict[str, dict]:
    return {r["id"]: r for r in read_records(folder).to_list()}


@pytest.fixture(scope="module")
def undisturbed(tiny_qwen2, tmp_path_factory):
    from distillkit.generate.stage import run_generate

    cfg = validate_recipe(generate_recipe(tiny_qwen2, tmp_path_factory.mktemp("undisturbed")))
    run_generate(cfg)
    folder = cfg.stage_dir("generate")
    return rows_by_id(folder), max(p.stat().st_size for p in list_shards(folder))


@needs_root
def test_disk_full_during_generate_is_one_message_and_the_rerun_loses_nothing(tiny_qwen2, undisturbed, tmp_path,
                                                                             capsys):
    expected, shard_bytes = undisturbed
    page = 4096
    with tmpfs(tmp_path / "small", "2m") as small:
        recipe = write_recipe(tmp_path / "r.yaml", generate_recipe(tiny_qwen2, small / "run"))
        # room for the state file and about one and a half shards: the second or third shard write fails
        filler = fill(small, leave_bytes=2 * page + (shard_bytes // page + 1) * page * 3 // 2)
        code, text = cli(["generate", recipe], capsys)
        assert code == 2, text
        assert "Traceback" not in text
        assert "no space left on the device" in text and "generate: writing shard" in text
        assert str(small / "run" / "generate") in text and "rerun the same command" in text
        folder = small / "run" / "generate"
        written = list_shards(folder)
        assert 0 < len(written) < 4  # the fault hit mid-run, after some shards were committed
        assert not list(folder.glob(".tmp-*"))  # a half-written shard never stays, not even under ENOSPC
        for shard in written:  # and every shard that looks finished is whole
            assert len(read_records(shard.parent).to_list()) > 0
        assert not (folder / "manifest.json").exists()

        filler.unlink()  # the user frees space and reruns the same command
        code, text = cli(["generate", recipe], capsys)
        assert code == 0, text
        got = rows_by_id(folder)
    assert got.keys() == expected.keys()  # nothing lost, nothing duplicated (ids are unique keys)
    assert len(got) == 16
    for rid, row in expected.items():
        assert got[rid]["completion_ids"] == row["completion_ids"] and got[rid]["topk_ids"] == row["topk_ids"]


@needs_root
def test_read_only_output_folder_is_one_message(tiny_qwen2, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        recipe = write_recipe(tmp_path / "r.yaml", generate_recipe(tiny_qwen2, ro / "run"))
        code, text = cli(["generate", recipe], capsys)
    assert code == 2 and "Traceback" not in text
    assert "read-only file system" in text and str(ro / "run") in text and "output_dir" in text


def test_output_folder_that_cannot_be_created_is_one_message(tiny_qwen2, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    recipe = write_recipe(tmp_path / "r.yaml", generate_recipe(tiny_qwen2, tmp_path / "a-file" / "run"))
    code, text = cli(["generate", recipe], capsys)
    assert code == 2 and "Traceback" not in text
    assert "generate: preparing the output folder" in text and "a-file" in text


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def offline_env() -> dict[str, str]:
    """No HF_HUB_OFFLINE, and every request goes to a proxy on a loopback port where nothing listens."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy")}
    proxy = f"http://127.0.0.1:{dead_port()}"
    env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy)
    return env


SHIPPED = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/*.yaml") if p.parent.name != "accelerate")

# One interpreter for every recipe: the CLI in-process, exit code and output per recipe as JSON lines.
RUN_MANY = r"""
import contextlib, io, json, sys
from distillkit.cli import main
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code
    print(json.dumps({"args": args, "code": code, "text": out.getvalue() + err.getvalue()}))
"""


def run_many(commands: list[list[str]], env: dict) -> list[dict]:
    run = subprocess.run([sys.executable, "-c", RUN_MANY, json.dumps(commands)], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_without_network_validate_warns_and_preflight_fails_fast_with_the_offline_hint():
    """Every shipped recipe validates with a warning (its Hub datasets not checked); preflight of a recipe naming Hub
    models stops at once with the HF_HUB_OFFLINE/cache hint instead of the loaders' retries."""
    assert len(SHIPPED) >= 10
    commands = [["validate", r] for r in SHIPPED] + [["preflight", "recipes/qwen2.5-math-1.5b/qlora_single_gpu.yaml"]]
    results = run_many(commands, offline_env())
    assert len(results) == len(commands)
    for (_, recipe), r in zip(commands[:-1], results[:-1]):
        assert r["code"] == 0 and "Traceback" not in r["text"], r
        if "hub_dataset" in (ROOT / recipe).read_text():  # the lab's recipes use built-in data only
            assert "not checked, network unreachable" in r["text"], r
    pre = results[-1]
    assert pre["code"] == 2 and "Traceback" not in pre["text"], pre
    assert "the Hugging Face Hub is not reachable" in pre["text"] and "HF_HUB_OFFLINE=1" in pre["text"]
    assert "Retry" not in pre["text"]  # one probe, not five retries per file


def test_failing_replicas_are_reported_once(tiny_qwen2, tmp_path, capsys):
    """Two real data-parallel replicas (spawned processes) hit the same fault: one merged message, no tracebacks."""
    import multiprocessing as mp  # noqa: F401  (the stage spawns)

    from distillkit.errors import DistillkitError
    from distillkit.generate.stage import _run_data_parallel, _shards
    from distillkit.generate.prompts import load_prompts

    (tmp_path / "blocker").write_text("a file where the run folder should be")
    cfg = validate_recipe(generate_recipe(tiny_qwen2, tmp_path / "blocker" / "run"))
    shards = _shards(load_prompts(cfg.generate.prompts, seed=cfg.seed).prompts, cfg.generate.shard_size)
    with pytest.raises(DistillkitError) as e:
        _run_data_parallel(cfg, shards, list(range(len(shards))), 2, lambda *a: None)
    text = str(e.value)
    assert text.startswith("generate: replica 0, replica 1: writing shard") and text.count("replica 0") == 1, text
    assert "Traceback" not in text and "Traceback" not in capsys.readouterr().err


def test_a_child_killed_without_a_report_names_the_signal(tmp_path):
    from distillkit.faults import EnvironmentFault, raise_from_children

    with pytest.raises(EnvironmentFault) as e:
        raise_from_children("train", {"rank 0": 0, "rank 1": -9}, tmp_path)
    assert "rank 1: ended with SIGKILL" in str(e.value) and "out-of-memory" in str(e.value)
    raise_from_children("train", {"rank 0": 0}, tmp_path)  # nothing failed: nothing raised


@needs_root
def test_two_training_ranks_on_a_full_disk_give_one_message(tiny_llama, tiny_qwen2, tmp_path, capsys):
    """Real DDP over 2 CPU processes (accelerate launch) writing to a small tmpfs: the ranks report to the parent,
    which prints one message; the launcher's own ChildFailedError traceback stays in train/launch.log."""
    from distillkit.errors import DistillkitError
    from distillkit.testing import load_file_module
    from distillkit.train.stage import run_train

    helpers = load_file_module(ROOT / "tests" / "train" / "train_helpers.py", "train_helpers_faults")
    records = helpers.teacher_records(tiny_qwen2, num=4, seed=1)
    with tmpfs(tmp_path / "small", "4m") as small:
        cfg = helpers.make_recipe(small / "run", records, tiny_llama, per_device_train_batch_size=2, num_processes=2,
                                  save_steps=1)
        fill(small, leave_bytes=96 * 1024)  # the recipe and the first log lines fit; a checkpoint does not
        with pytest.raises(DistillkitError) as e:
            run_train(cfg)
        log_text = (cfg.stage_dir("train") / "launch.log").read_text()
    text = str(e.value)
    assert "no space left on the device" in text and "train: rank 0" in text, text
    assert text.count("\ntrain: ") == 0 or "rank 1" not in text.split("\n")[0]  # one line per distinct fault
    assert "Traceback" not in text and "Traceback" not in capsys.readouterr().err
    assert "ChildFailedError" in log_text or "exitcode" in log_text  # the launcher's account is kept, not shown


@needs_root
def test_a_writer_that_hides_the_errno_is_read_as_disk_full_when_its_folder_is_full(tmp_path):
    """torch.save on a full disk raises RuntimeError("... iostream error") / "unexpected pos", with no errno."""
    from distillkit.faults import explain, operation

    with tmpfs(tmp_path / "small", "64m") as small:
        def fail():
            with operation("train: training", writes_to=small / "run" / "train"):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 336262528 vs 336262416")

        with pytest.raises(RuntimeError) as room:
            fail()
        assert explain(room.value) is None  # room left: a bug, not the disk
        fill(small, leave_bytes=0)
        with pytest.raises(RuntimeError) as full:
            fail()
        fault = explain(full.value)
    assert fault is not None and fault.kind == "disk"
    assert str(fault).startswith(f"train: training: no space left on the device at {small}")
    assert "unexpected pos" in str(fault) and "rerun the same command" in str(fault)


def test_a_truncated_model_file_is_named_as_damaged(tiny_llama, tmp_path, capsys):
    """A student whose model.safetensors was cut short: evaluate's loader raises safetensors' own error."""
    import shutil

    from transformers import AutoModelForCausalLM

    from distillkit.cli import report_unexpected
    from distillkit.faults import explain, operation

    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(Exception) as e:
        with operation(f"evaluate: student_after ({model})"):
            AutoModelForCausalLM.from_pretrained(model)
    fault = explain(e.value)
    assert fault is not None and fault.kind == "damaged"
    assert str(fault).startswith(f"evaluate: student_after ({model}): a model file is damaged")
    assert "distillkit train --overwrite" in str(fault)
    assert report_unexpected(e.value) == 2 and "Traceback" not in capsys.readouterr().err


def test_hub_refusals_for_load_and_disk_errnos_are_named():
    """What cannot be produced for real here: the Hub answering 503/429, a quota, a permission denied to root."""
    import errno

    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from distillkit.faults import explain

    url = "https://huggingface.co/api/datasets/HuggingFaceH4/MATH-500"
    for status in (503, 429):
        response = httpx.Response(status, request=httpx.Request("GET", url))
        fault = explain(HfHubHTTPError(f"{status} Server Error", response=response))
        assert fault is not None and fault.kind == "network"
        assert f"could not reach {url}" in fault.what and f"HTTP {status}" in fault.what and "HF_HUB_OFFLINE" in fault.fix
    not_found = httpx.Response(404, request=httpx.Request("GET", url))
    assert explain(HfHubHTTPError("404 Client Error", response=not_found)) is None  # a refusal to read, not a fault
    quota = explain(OSError(errno.EDQUOT, "Disk quota exceeded", "/data/run/train/model.safetensors"))
    assert quota.kind == "disk" and "disk quota exceeded at /data/run/train/model.safetensors" in quota.what
    denied = explain(PermissionError(errno.EACCES, "Permission denied", "/shared/runs"))
    assert denied.kind == "disk" and "permission denied at /shared/runs" in denied.what and "output_dir" in denied.fix
