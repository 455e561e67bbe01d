"""The code sandbox attacked, one property per test; each attack is contained and we survive it."""

import os
import socket
import sys
import time

import pytest

from distillkit.verify.sandbox import NOBODY, execute_code, isolation_mode

MODE = isolation_mode()
strong = pytest.mark.skipif(MODE == "none", reason="no namespace isolation on this machine")


def test_plain_run_reads_stdin_and_reports_mode():
    res = execute_code("print(int(input()) * 2)", stdin="21\n")
    assert res.success and res.stdout == "42\n" and res.error is None
    assert res.isolation == MODE


def test_infinite_loop_is_killed():
    res = execute_code("while True:\n    pass\n", timeout_s=1)
    assert (res.success, res.timeout, res.error) == (False, True, "timeout")


def test_memory_bomb_hits_the_address_space_limit():
    res = execute_code("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n", memory_mb=256)
    assert (res.success, res.memory_exceeded, res.error) == (False, True, "memory_exceeded")


@pytest.mark.skipif(os.getuid() != 0 and MODE == "none", reason="needs a uid of its own for RLIMIT_NPROC")
def test_fork_bomb_is_capped_by_the_process_limit():
    code = (
        "import os, sys, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(10000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('fork refused after', n, type(e).__name__, flush=True)\n"
    )
    res = execute_code(code, timeout_s=5, max_processes=8)
    assert "fork refused after" in res.stdout, res
    assert int(res.stdout.split()[3]) < 8
    if os.getuid() == 0:  # the sleeping children died with the sandbox, none outlived it
        for _ in range(50):
            alive = [p for p in os.listdir("/proc") if p.isdigit() and _uid(p) == NOBODY]
            if not alive:
                break
            time.sleep(0.1)
        assert alive == []


def _uid(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


NET_MODES = [m for m in ("bwrap", "unshare") if MODE == m or (m == "unshare" and MODE != "none")]


@pytest.mark.parametrize("mode", NET_MODES or [pytest.param("none", marks=pytest.mark.skip("no namespaces"))])
def test_network_connection_is_refused(mode):
    # A listener on our loopback: reachable from any process sharing our network namespace.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('blocked', type(e).__name__)\n"
    )
    try:
        res = execute_code(code, isolation=mode)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert res.isolation == mode
    assert res.stdout.startswith("blocked")


@strong
def test_write_outside_its_directory_does_not_land(tmp_path):
    target = tmp_path / "escaped.txt"
    code = (
        "import os\n"
        "open('inside.txt', 'w').write('ok')\n"
        "print(os.getcwd())\n"
        "try:\n"
        f"    open({str(target)!r}, 'w').write('pwned')\n"
        "    print('wrote')\n"
        "except OSError as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    res = execute_code(code)
    assert res.success
    assert not target.exists()
    # Its own directory (where writing worked) is removed afterwards.
    assert not [p for p in os.listdir("/tmp") if p.startswith("distillkit-sandbox-")
                and os.path.exists(f"/tmp/{p}/inside.txt")]


def test_environment_secrets_are_not_passed(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-456")
    res = execute_code("import os\nprint(dict(os.environ))\n")
    assert res.success
    assert "secret_value" not in res.stdout and "secret-value" not in res.stdout
    assert "HF_TOKEN" not in res.stdout


def test_huge_output_is_cut_at_the_cap():
    res = execute_code("while True:\n    print('x' * 100000)\n", max_output_bytes=50_000, timeout_s=5)
    assert (res.success, res.output_truncated, res.error) == (False, True, "output_limit_exceeded")
    assert len(res.stdout) <= 50_000


def test_killing_its_parent_and_us_fails():
    me = os.getpid()
    code = (
        "import os, signal\n"
        "for pid in (os.getppid(), %d):\n"
        "    try:\n"
        "        os.kill(pid, signal.SIGKILL)\n"
        "        print('killed', pid)\n"
        "    except (OSError, ValueError) as e:\n"
        "        print('failed', pid, type(e).__name__)\n"
    ) % me
    res = execute_code(code)
    assert f"failed {me}" in res.stdout  # it could not reach the test process
    assert os.getpid() == me and sys.exc_info() == (None, None, None)  # and we are still here


# ------------------------------------------------------------------ refusal without isolation


@pytest.mark.parametrize("mode", ["bwrap", "unshare", "unshare-user", "none"])
def test_code_verifier_refuses_unisolated_code_unless_opted_in(mode, monkeypatch):
    from distillkit.errors import DistillkitError
    from distillkit.verify.sandbox import FORCE_ENV
    from distillkit.verify.verifiers.code import CodeVerifier

    monkeypatch.setenv(FORCE_ENV, mode)  # as if the probe had found only this mode
    if mode != "none":
        with CodeVerifier() as v:
            assert v.stats() == {"isolation": mode}
        return
    with pytest.raises(DistillkitError) as e:
        CodeVerifier()
    msg = str(e.value)
    assert "bubblewrap" in msg and "unprivileged_userns_clone" in msg and "allow_unisolated: true" in msg
    with CodeVerifier(allow_unisolated=True) as v:  # the explicit opt-in runs it, and says so
        assert v.stats() == {"isolation": "none"}
        record = {"response": "```python\ndef add(a, b):\n    return a + b\n```", "reasoning_closed": True,
                  "tests": '[{"type": "assert", "code": "assert add(1, 2) == 3"}]'}
        assert v(record).reason == "tests_passed"


def test_forcing_an_unknown_mode_is_an_error(monkeypatch):
    from distillkit.errors import DistillkitError
    from distillkit.verify.sandbox import FORCE_ENV

    monkeypatch.setenv(FORCE_ENV, "docker")
    with pytest.raises(DistillkitError, match="not a sandbox mode"):
        isolation_mode()


def test_filter_stage_refuses_before_verifying_and_records_the_opt_in(tmp_path, monkeypatch):
    from distillkit.config import RecipeConfig
    from distillkit.errors import DistillkitError
    from distillkit.filter.stage import run_filter
    from distillkit.publish.cards import render_dataset_card
    from distillkit.records import read_manifest
    from distillkit.testing.traces import write_synthetic_run
    from distillkit.verify.sandbox import FORCE_ENV

    def cfg(**code):
        return RecipeConfig.model_validate({"name": "code", "output_dir": str(tmp_path / "run"),
                                            "filter": {"num_workers": 1, "verifiers": [{"kind": "code", **code}]}})

    write_synthetic_run(cfg().stage_dir("generate"), 8, shard_size=4, samples=2, chars=200)
    monkeypatch.setenv(FORCE_ENV, "none")
    with pytest.raises(DistillkitError, match="allow_unisolated"):
        run_filter(cfg(), show_progress=False)
    assert not list((tmp_path / "run" / "filter").glob(".work/judged-*"))  # refused before any shard
    m = run_filter(cfg(allow_unisolated=True), show_progress=False)
    assert m.stats["verifiers"]["code"] == {"isolation": "none"}
    card = render_dataset_card(cfg(allow_unisolated=True), None, read_manifest(tmp_path / "run" / "filter")).text
    assert "WITHOUT network or file-system isolation" in card
    monkeypatch.setenv(FORCE_ENV, "bwrap")
    m = run_filter(cfg(), overwrite=True, show_progress=False)
    card = render_dataset_card(cfg(), None, m).text
    assert "in a sandbox: bubblewrap" in card
