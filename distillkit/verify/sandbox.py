"""Run untrusted generated code in a separate, limited process and return a typed `ExecutionResult`.

What it protects against (each one is attacked by a test in tests/filter/test_sandbox.py):
  - infinite loops and slow code: a wall-clock timeout kills the whole process group, and an
    RLIMIT_CPU backs it up inside the child;
  - memory bombs: RLIMIT_AS caps the address space (the code sees MemoryError);
  - fork bombs: RLIMIT_NPROC caps processes; it only binds a non-root uid, so when we are root the
    child drops to `nobody` (65534) before running the code;
  - huge output: stdout/stderr are read up to `max_output_bytes`, then the process is killed;
    RLIMIT_FSIZE caps any single file it writes;
  - secrets in the environment: the child gets a fresh, minimal environment (no tokens or keys);
  - network access: a new network namespace with no interfaces (bubblewrap `--unshare-net`, or
    `unshare --net`);
  - writes outside its directory and reading the host's home: under bubblewrap the filesystem is a
    read-only view of the system directories and Python only, plus a private writable directory
    that is deleted afterwards; `/root`, `/home` and the run folder are simply not there;
  - killing its parent: it runs in its own pid namespace (cannot see our pids) and as another uid.

What it does NOT protect against:
  - kernel exploits and side channels: this is process isolation, not a VM;
  - reading world-readable files in the system directories it can see (/etc, /usr);
  - filling the private tmpfs with many files below RLIMIT_FSIZE each (it counts against RAM until
    the wall timeout ends the run);
  - the weaker modes. Without bubblewrap we fall back to `unshare --net --pid` (no network, own pid
    namespace, but the host filesystem is visible and only uid `nobody`'s permissions keep writes
    out). Where namespaces are not allowed at all (many cluster nodes) only a plain subprocess with
    rlimits, a scrubbed environment and a temp directory is left: it has NO network or filesystem
    isolation, so the code verifier refuses to run there (`require_isolation`) unless the recipe sets
    `allow_unisolated: true`, which the manifest and the dataset card record.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

NOBODY = 65534

# Runs inside the sandbox before the untrusted code: limits first (a non-root process can only
# lower them), then drop root, then the process-count limit (it binds the uid we run as).
_LAUNCHER = r"""
import os, resource, runpy, sys
cpu, mem, nproc, fsize, drop = map(int, sys.argv[1:6])
def lim(r, v):
    resource.setrlimit(r, (v, v))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
if mem > 0:
    lim(resource.RLIMIT_AS, mem)
lim(resource.RLIMIT_FSIZE, fsize)
lim(resource.RLIMIT_CORE, 0)
if drop and os.getuid() == 0:
    os.setgroups([])
    os.setgid(%(nobody)d)
    os.setuid(%(nobody)d)
if nproc > 0:
    lim(resource.RLIMIT_NPROC, nproc)
del cpu, mem, nproc, fsize, drop, lim
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
""" % {"nobody": NOBODY}


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one run, in the shape of nanochat's sandbox result."""

    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    """None on success; else "timeout", "memory_exceeded", "output_limit_exceeded", "file_size_exceeded",
    "exit_code_N" or "killed_by_signal_N"."""
    timeout: bool = False
    memory_exceeded: bool = False
    output_truncated: bool = False
    returncode: int | None = None
    isolation: str = ""
    """Which guard ran it: "bwrap", "unshare" or "none"."""


# ----------------------------------------------------------------------------------------- isolation


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _python_dirs(python: str) -> list[str]:
    """Folders the sandboxed interpreter needs: its install, the venv, and their real paths."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    return sorted(d for d in dirs if d and os.path.isdir(d))


def _bwrap_prefix(python: str, workdir: str) -> list[str]:
    cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid",
           "--unshare-ipc", "--unshare-uts", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    # System folders read-only; nothing else of the host (no /root, /home, run folders) exists inside.
    for d in ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc"):
        if os.path.exists(d):
            cmd += ["--ro-bind", d, d]
    made: set[str] = set()
    for d in _python_dirs(python):
        # Parents of a pyenv under /root would keep their host mode 700 and lock `nobody` out of
        # the interpreter; create them as plain 755 folders (they hold nothing but this path).
        parts = d.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made and parent not in ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc"):
                cmd += ["--perms", "0755", "--dir", parent]
                made.add(parent)
        cmd += ["--ro-bind", d, d]
    return cmd + ["--bind", workdir, "/sandbox", "--chdir", "/sandbox"]


MODES = ("bwrap", "unshare", "unshare-user", "none")
FORCE_ENV = "DISTILLKIT_SANDBOX_ISOLATION"


def isolation_mode(python: str = sys.executable) -> str:
    """The strongest guard that works here: "bwrap", "unshare", "unshare-user" or "none" (probed once per
    process). DISTILLKIT_SANDBOX_ISOLATION forces one (tests; pinning a mode on a cluster's workers)."""
    forced = os.environ.get(FORCE_ENV)
    if forced:
        if forced not in MODES:
            from distillkit.errors import DistillkitError

            raise DistillkitError(f"{FORCE_ENV}={forced!r} is not a sandbox mode; use one of {list(MODES)}")
        return forced
    return _probe_isolation(python)


@functools.lru_cache(maxsize=None)
def _probe_isolation(python: str) -> str:
    if shutil.which("bwrap"):
        probe_dir = tempfile.mkdtemp(prefix="distillkit-probe-")
        try:
            if _probe(_bwrap_prefix(python, probe_dir) + [python, "-I", "-c", "pass"]):
                return "bwrap"
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        log.warning("bubblewrap is installed but does not work here; trying `unshare`")
    if shutil.which("unshare"):
        flags = ["--net", "--pid", "--fork", "--kill-child"]
        if _probe(["unshare", *flags, "true"]):
            return "unshare"
        if _probe(["unshare", "--map-root-user", *flags, "true"]):
            return "unshare-user"
    return "none"


UNISOLATED_HELP = (
    "Neither bubblewrap nor Linux namespaces work on this machine, so model-written code would run with "
    "rlimits and a scrubbed environment only: it could reach the network and write anywhere this user can. "
    "The code verifier refuses that by default. Fix: install bubblewrap (apt-get install bubblewrap), or "
    "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or "
    "user.max_user_namespaces > 0), or run the filter where one of them works (filter.executor: local on "
    "a workstation). To accept the risk on this machine, set `allow_unisolated: true` on the code "
    "verifier (filter.verifiers: [{kind: code, allow_unisolated: true}]); the run's manifest and dataset "
    "card then say the code ran unisolated.")


def require_isolation(allow_unisolated: bool = False, python: str = sys.executable) -> str:
    """The isolation mode code will run under; refuses "none" unless the user opted in."""
    mode = isolation_mode(python)
    if mode == "none":
        if not allow_unisolated:
            from distillkit.errors import DistillkitError

            raise DistillkitError(f"code sandbox: {UNISOLATED_HELP}")
        log.warning("code sandbox: running model-written code WITHOUT network or filesystem isolation "
                    "(allow_unisolated: true)")
    return mode


@functools.lru_cache(maxsize=None)
def _warn_unisolated() -> None:
    log.warning("code sandbox: no isolation works here; running code with rlimits and a scrubbed environment "
                "only (it CAN reach the network and write anywhere this user can)")


@functools.lru_cache(maxsize=None)
def _nobody_can_run(python: str) -> bool:
    """Whether `nobody` can start this interpreter (a pyenv under /root, mode 700, is out of reach)."""
    code = f"import os; os.setgid({NOBODY}); os.setuid({NOBODY}); os.execv({python!r}, [{python!r}, '-I', '-c', 'pass'])"
    return os.getuid() == 0 and _probe([python, "-I", "-c", code])


def _own_process_count() -> int:
    uid = os.getuid()
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


# ----------------------------------------------------------------------------------------- running


def _read_capped(proc: subprocess.Popen, max_bytes: int, deadline: float) -> tuple[bytes, bytes, bool, bool]:
    """(stdout, stderr, timed_out, truncated) reading both pipes until EOF, the deadline or the cap."""
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    timed_out = truncated = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                buf += chunk
                if len(buf) > max_bytes:
                    del buf[max_bytes:]
                    truncated = True
            if truncated:
                break
    finally:
        sel.close()
    return bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]), timed_out, truncated


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole session: children that did not setsid die too
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _run_as(mode: str, python: str, workdir: str, max_processes: int) -> tuple[bool, int]:
    """(whether the code runs as nobody, the RLIMIT_NPROC to set). As root the code drops to nobody where it can
    (bwrap, or an interpreter nobody may run), and the work folder is handed to nobody."""
    is_root = os.getuid() == 0
    drop = is_root and (mode == "bwrap" or _nobody_can_run(python))
    if drop:
        os.chown(workdir, NOBODY, NOBODY)
        return drop, max_processes
    if is_root:
        return drop, 0  # RLIMIT_NPROC never binds root; the wall timeout and pid namespace must do
    # The limit counts every process of our uid, not only the sandbox's.
    return drop, _own_process_count() + max_processes


def _isolated_command(mode: str, python: str, workdir: str, launcher: list[str]) -> tuple[list[str], str]:
    """(command, working folder): the launcher inside bwrap, inside unshare's namespaces, or bare."""
    if mode == "bwrap":
        return _bwrap_prefix(python, workdir) + launcher, workdir
    if mode in ("unshare", "unshare-user"):
        extra = ["--map-root-user"] if mode == "unshare-user" else []
        return ["unshare", *extra, "--net", "--pid", "--fork", "--kill-child", *launcher], workdir
    return launcher, workdir


def _error_of(rc: int, stderr: str, timed_out: bool, truncated: bool, memory: bool) -> str | None:
    """ExecutionResult.error from how the process ended; the first that applies, in this order."""
    if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    if truncated:
        return "output_limit_exceeded"
    if memory:
        return "memory_exceeded"
    if rc in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or "File too large" in stderr:
        return "file_size_exceeded"
    if rc != 0:
        return f"killed_by_signal_{-rc}" if rc < 0 else f"exit_code_{rc}"
    return None


def execute_code(code: str, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 1024,
                 max_processes: int = 16, max_output_bytes: int = 1 << 20, max_file_mb: int = 16,
                 python: str | None = None, isolation: str | None = None) -> ExecutionResult:
    """Run `code` as `main.py` with `stdin` in a sandbox; see the module docstring for the guarantees.

    `isolation` forces a mode ("bwrap", "unshare", "none") instead of the strongest available one.
    """
    python = python or sys.executable
    mode = isolation or isolation_mode(python)
    if mode == "none" and isolation is None:
        _warn_unisolated()  # a direct caller; the code verifier refuses this mode unless opted in
    workdir = tempfile.mkdtemp(prefix="distillkit-sandbox-")
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        with open(os.path.join(workdir, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        drop, nproc = _run_as(mode, python, workdir, max_processes)
        launcher = [python, "-I", "-c", _LAUNCHER, str(math.ceil(timeout_s) + 1),
                    str(memory_mb << 20), str(nproc), str(max_file_mb << 20), str(int(drop))]
        cmd, cwd = _isolated_command(mode, python, workdir, launcher)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/sandbox" if mode == "bwrap" else workdir,
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1"}
        with open(os.path.join(workdir, "stdin.txt"), "rb") as stdin_file:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=stdin_file, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err, timed_out, truncated = _read_capped(proc, max_output_bytes, time.monotonic() + timeout_s)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            proc.wait()
            _kill_group(proc)  # stragglers that kept running after the main process exited
            proc.stdout.close()
            proc.stderr.close()
        rc = proc.returncode
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        memory = not timed_out and ("MemoryError" in stderr or "Cannot allocate memory" in stderr)
        error = _error_of(rc, stderr, timed_out, truncated, memory)
        timed_out = timed_out or error == "timeout"
        return ExecutionResult(success=error is None, stdout=stdout, stderr=stderr, error=error,
                               timeout=timed_out, memory_exceeded=memory, output_truncated=truncated,
                               returncode=rc, isolation=mode)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
