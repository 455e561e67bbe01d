"""Faults of the machine, not of the recipe: no network, a full or read-only disk, a process killed under us.

`explain(exc)` looks through an exception and its causes for such a fault and returns an `EnvironmentFault`
whose message names what was being done, the path or URL, and the fix; the CLI prints it and exits 2.
Anything it does not recognise is a bug (exit 1). `operation(...)` labels a block, so that the message
says "generate: writing shard 3" rather than only the errno.

    network   DNS failure, connection refused/reset, timeouts, a proxy that does not answer, HTTP 429/5xx
              from the Hub, a file the Hub cache lacks while offline
    disk      ENOSPC, EDQUOT, EROFS, EACCES/EPERM, a missing parent folder (ENOENT, ENOTDIR)
    process   a child killed by a signal (the OOM killer's SIGKILL), a broken worker pool, a dead vLLM engine
    damaged   a model file that cannot be read (a truncated safetensors or torch checkpoint)

Libraries name their exception classes alike (httpx, requests, urllib3, huggingface_hub's own copy of
httpx), so network errors are recognised by class name along the MRO, not by importing each library.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
from collections.abc import Iterator

from distillkit.errors import DistillkitError

RESUME = "then rerun the same command: finished work is kept"
DISK = {
    errno.ENOSPC: ("no space left on the device", "free space there, or point output_dir at a larger volume; " + RESUME),
    errno.EDQUOT: ("disk quota exceeded", "free space in your quota, or point output_dir elsewhere; " + RESUME),
    errno.EROFS: ("read-only file system", "set output_dir (or the path named) to a writable folder"),
    errno.EACCES: ("permission denied", "make it writable for this user, or set output_dir to a folder you own"),
    errno.EPERM: ("operation not permitted", "make it writable for this user, or set output_dir to a folder you own"),
    errno.ENOENT: ("no such file or folder", "check the path (its parent folders must exist or be creatable)"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EMFILE: ("too many open files", "raise the limit (`ulimit -n 65536`) and " + RESUME),
}
DISK_TEXTS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
              errno.EROFS: "Read-only file system"}
NETWORK_CLASSES = {
    "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
    "ProxyError", "NetworkError", "RemoteProtocolError", "TransportError",  # httpx (and huggingface_hub's copy)
    "NewConnectionError", "MaxRetryError", "ProtocolError",  # urllib3
    "SSLError", "ConnectTimeoutError", "ReadTimeoutError",
    "OfflineModeIsEnabled",  # huggingface_hub with HF_HUB_OFFLINE set
}
NETWORK_BUILTINS = (ConnectionError, TimeoutError)  # refused, reset, aborted; socket.timeout
HUB_HINT = ("if this machine has no network, set HF_HUB_OFFLINE=1 and put the files in the Hugging Face cache first "
            "(`huggingface-cli download NAME` where there is network, then copy ~/.cache/huggingface), or give a "
            "local folder instead of a Hub name")


class EnvironmentFault(DistillkitError):
    """A fault of the machine (network, disk, a killed process): exit 2 with the operation, the target and the fix."""

    def __init__(self, kind: str, what: str, fix: str):
        self.kind, self.what, self.fix = kind, what, fix
        super().__init__(f"{what}\n  fix: {fix}")


@contextlib.contextmanager
def operation(text: str, writes_to: str | os.PathLike | None = None) -> Iterator[None]:
    """Label the block: a fault raised inside it is reported as happening while `text` (the innermost label wins).

    `writes_to`: the folder the block writes into. Some writers turn a full disk into an error that names no errno
    (torch.save: "iostream error", "unexpected pos"); when the block fails while that folder's file system is full,
    the fault is reported as a full disk."""
    try:
        yield
    except BaseException as e:
        for attr, value in (("_distillkit_operation", text), ("_distillkit_writes_to", writes_to)):
            if value is not None and getattr(e, attr, None) is None:
                try:
                    setattr(e, attr, value)
                except AttributeError:  # an exception type with __slots__
                    pass
        raise


FULL_BELOW_BYTES = 16 * 1024 * 1024


def _full_file_system(folder: str | os.PathLike) -> str | None:
    """`folder` (or its nearest existing parent) when its file system has less than FULL_BELOW_BYTES free."""
    path = os.path.abspath(os.fspath(folder))
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return path if st.f_bavail * st.f_frsize < FULL_BELOW_BYTES else None


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (`raise ... from`, or the exception being handled), outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _names(exc: BaseException) -> set[str]:
    return {k.__name__ for k in type(exc).__mro__}


def _url(exc: BaseException) -> str | None:
    try:  # httpx: .request raises RuntimeError when the exception was made without one
        request = exc.request
    except Exception:
        request = None
    url = getattr(request, "url", None)
    if url is None:
        response = getattr(exc, "response", None)
        url = getattr(getattr(response, "request", None), "url", None) or getattr(response, "url", None)
    if url is None:
        match = re.search(r"https?://[^\s'\"),]+", str(exc))
        url = match.group(0) if match else None
    return str(url) if url else None


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def network_reason(exc: BaseException) -> tuple[str, str | None] | None:
    """(reason, url) when `exc` or a cause is a network failure (or the Hub refusing for load: 429/5xx); else None."""
    for e in causes(exc):
        names = _names(e)
        status = _http_status(e)
        if status is not None and (status == 429 or status >= 500) and names & {"HfHubHTTPError", "HTTPStatusError", "HTTPError"}:
            return f"the server answered HTTP {status}", _url(e)
        if names & NETWORK_CLASSES or "gaierror" in names or (
                isinstance(e, NETWORK_BUILTINS) and not isinstance(e, BrokenPipeError)):
            return _short(e), _url(e)
        if "LocalEntryNotFoundError" in names:  # huggingface_hub: not cached, and the Hub not reached
            return "the file is not in the local cache and the Hub could not be reached", _url(e)
    return None


def disk_reason(exc: BaseException) -> tuple[int, str | None, str] | None:
    """(errno, path, strerror) of the first OSError in the chain with an errno distillkit explains; else None."""
    for e in causes(exc):
        if isinstance(e, NETWORK_BUILTINS) or "gaierror" in _names(e):
            continue
        code = e.errno if isinstance(e, OSError) else None
        if code is None:  # pyarrow, safetensors and others say it in the message: "[errno 28]", "(os error 28)"
            match = re.search(r"(?:errno|os error) ?(\d+)", str(e), re.IGNORECASE)
            code = int(match.group(1)) if match else next(
                (c for c, text in DISK_TEXTS.items() if text in str(e)), None)
        if code in DISK and code != errno.ENOENT or code == errno.ENOENT and isinstance(e, OSError):
            path = e.filename if isinstance(e, OSError) else None
            return code, (os.fsdecode(path) if path is not None else None), DISK[code][0]
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def signal_name(returncode: int) -> str:
    """"SIGKILL" for -9 (subprocess) or 137 (a shell's 128 + 9); the exit code as text otherwise."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else None
    if number is None:
        return f"exit code {returncode}"
    try:
        return f"{signal.Signals(number).name} (exit code {returncode})"
    except ValueError:
        return f"exit code {returncode}"


def killed_hint(returncode: int) -> str:
    """What a child's exit code says about who ended it."""
    name = signal_name(returncode)
    if "SIGKILL" in name:
        return (f"it was killed ({name}), most often by the kernel's out-of-memory killer (`dmesg | tail`): lower "
                "the batch or context size, or use a machine with more memory; " + RESUME)
    if "SIGTERM" in name or "SIGINT" in name:
        return f"it was stopped ({name}); " + RESUME
    return f"it ended with {name}; see its messages above, " + RESUME


def _label(exc: BaseException, attr: str):
    """The innermost `operation(...)` label `attr` along the chain, or None."""
    return next((v for e in causes(exc) if (v := getattr(e, attr, None)) is not None), None)


def explain(exc: BaseException) -> EnvironmentFault | None:
    """The environment fault behind `exc`, as one message; None when `exc` is not one (a user mistake or a bug)."""
    if isinstance(exc, EnvironmentFault):
        return exc
    op = _label(exc, "_distillkit_operation")
    writes_to = _label(exc, "_distillkit_writes_to")
    during = f"{op}: " if op else ""
    net = network_reason(exc)
    if net is not None:
        reason, url = net
        proxy = next((f"{k}={os.environ[k]}" for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                        "ALL_PROXY", "all_proxy") if os.environ.get(k)), None)
        target = f" {url}" if url else ""
        via = f" through the proxy {proxy}" if proxy else ""
        fix = f"check the network and the proxy ({proxy}); " if proxy else "check the network; "
        hub = url is None or "huggingface" in url or "hf.co" in url
        fix += HUB_HINT if hub else "check that the server is up and the URL is right, " + RESUME
        return EnvironmentFault("network", f"{during}could not reach{target}{via} ({reason})", fix)
    disk = disk_reason(exc)
    if disk is not None:
        code, path, text = disk
        path = path or (os.fspath(writes_to) if writes_to is not None else None)
        where = f" at {path}" if path else ""
        fix = DISK[code][1]
        if code in (errno.ENOSPC, errno.EDQUOT) and path:
            fix = f"{fix} (df -h {os.path.dirname(path) or path})"
        return EnvironmentFault("disk", f"{during}{text}{where}", fix)
    for e in causes(exc):  # a model file cut short or overwritten (a copy gone wrong, a disk fault earlier)
        if _names(e) & {"SafetensorError", "HeaderTooLarge"} or "PytorchStreamReader failed" in str(e):
            return EnvironmentFault("damaged", f"{during}a model file is damaged ({_short(e)})",
                                    "put back a good copy of the model folder, or rerun the stage that wrote it with "
                                    "--overwrite (the student: `distillkit train --overwrite`)")
    if writes_to is not None and (full := _full_file_system(writes_to)) is not None:
        return EnvironmentFault("disk", f"{during}{DISK[errno.ENOSPC][0]} at {full} (the writer said: {_short(exc)})",
                                f"{DISK[errno.ENOSPC][1]} (df -h {full})")
    for e in causes(exc):
        names = _names(e)
        if names & {"BrokenProcessPool", "EngineDeadError", "BrokenPipeError"}:
            return EnvironmentFault("process", f"{during}a worker process died ({_short(e)})",
                                    "check memory (`dmesg | tail` shows the out-of-memory killer); " + RESUME)
    return None


# ----------------------------------------------------------------------------------------- child processes
# A generate replica or a training rank that fails writes one small report for its parent and exits 1 without a
# traceback; the parent prints the reports once (identical ones merged), so N ranks hitting the same full disk
# give one message, not N tracebacks.

REPORTS_ENV = "DISTILLKIT_FAULT_REPORTS"


def describe(exc: BaseException) -> dict:
    """{"kind": network|disk|process|user|bug, "message": ..., "fix": ...} for a child's report."""
    import traceback

    fault = explain(exc)
    if fault is not None:
        return {"kind": fault.kind, "message": fault.what, "fix": fault.fix}
    if isinstance(exc, DistillkitError):
        return {"kind": "user", "message": str(exc), "fix": ""}
    return {"kind": "bug", "message": "".join(traceback.format_exception(exc)), "fix": ""}


@contextlib.contextmanager
def reporting_to_parent(name: str, folder: str | os.PathLike | None = None) -> Iterator[None]:
    """In a child process: an exception in the block becomes a report in `folder` (default: $DISTILLKIT_FAULT_REPORTS)
    and exit code 1, with nothing printed but a one-line note when the report cannot be written. Without a folder
    the exception propagates as usual."""
    import json
    import sys

    folder = folder or os.environ.get(REPORTS_ENV)
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        if not folder:
            raise
        report = {"name": name, **describe(e)}
        try:
            path = os.path.join(folder, f"{name.replace(' ', '-')}.json")
            with open(path + ".tmp", "w") as f:
                json.dump(report, f)
            os.replace(path + ".tmp", path)
        except OSError:  # the parent's folder is on the full disk too: say it here, briefly
            print(f"{name}: {report['message'].splitlines()[-1][:500]}", file=sys.stderr)
        sys.exit(1)


def read_reports(folder: str | os.PathLike) -> list[dict]:
    import json
    from pathlib import Path

    out = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def raise_from_children(what: str, exit_codes: dict[str, int], folder: str | os.PathLike) -> None:
    """One exception for the children that failed (`exit_codes`: name -> exit code, 0 = fine): their reports merged,
    or the signal that ended those that could not report. An EnvironmentFault or DistillkitError where every report
    says so; a RuntimeError (a bug) with the first traceback otherwise."""
    failed = {n: c for n, c in exit_codes.items() if c != 0}
    if not failed:
        return
    reports = {r["name"]: r for r in read_reports(folder) if r.get("name") in failed}
    # The same fault in several children reads alike but for numbers (shard 0, shard 1): one line for all of them.
    groups: dict[tuple[str, str, str], tuple[str, list[str]]] = {}
    for name, code in failed.items():
        r = reports.get(name) or {"kind": "process", "message": f"ended with {signal_name(code)} before it could "
                                  "report", "fix": killed_hint(code)}
        key = (r["kind"], re.sub(r"\d+", "N", r["message"]), r.get("fix", ""))
        groups.setdefault(key, (r["message"], []))[1].append(name)
    bugs = [(m, names) for (k, _, _), (m, names) in groups.items() if k == "bug"]
    if len(bugs) < len(groups):  # a fault on one rank breaks the others' collectives: those are not the cause
        groups = {k: v for k, v in groups.items() if k[0] != "bug"}
    elif bugs:
        message, names = bugs[0]
        raise RuntimeError(f"{what}: {', '.join(names)} failed with:\n{message}")
    what_lines = "\n".join(f"{what}: {', '.join(names)}: {m.removeprefix(what + ': ')}"
                           for m, names in groups.values())
    fixes = "; ".join(dict.fromkeys(fix for (_, _, fix) in groups if fix))
    kinds = sorted({k for k, _, _ in groups} - {"user"})
    if not kinds:
        raise DistillkitError(what_lines + (f"\n  fix: {fixes}" if fixes else ""))
    raise EnvironmentFault(kinds[0], what_lines, fixes or RESUME)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG; a no-op elsewhere).

    torchrun starts each training rank in a session of its own, so a `kill -9` of distillkit (or of the launcher)
    would leave the ranks training on, orphaned, writing into the run folder. With this in the launcher (set by
    distillkit) and in each rank, the whole tree goes down with distillkit."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
