"""Code verifier: the last fenced code block of the answer, run against the record's tests in the sandbox.

Tests come from the record's `tests` column (JSON):
    [{"type": "assert", "code": "assert add(1, 2) == 3"}, {"type": "stdio", "input": "1 2\\n", "output": "3\\n"}]
An assert test runs the solution followed by the test code; a stdio test feeds `input` and compares
stdout with `output` line by line, ignoring trailing whitespace. Records are checked in parallel
threads: the work happens in sandbox subprocesses, so threads only wait (and nothing uses SIGALRM).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from distillkit.verify.verifiers.base import Verdict, Verifier, answer_text

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)
_PYTHON_TAGS = {"", "python", "py", "python3"}


def extract_code(text: str) -> str | None:
    """The last fenced block tagged python (or untagged); None when there is none."""
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    return blocks[-1] if blocks and blocks[-1].strip() else None


def _same_output(got: str, want: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return norm(got) == norm(want)


class CodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(5.0, gt=0)
    """Wall-clock seconds per test case."""
    memory_mb: int = Field(1024, gt=0)
    """Address-space limit of the sandboxed process."""
    max_processes: int = Field(16, gt=0)
    max_output_bytes: int = Field(1 << 20, gt=0)
    stop_at_first_failure: bool = True
    """Skip the remaining tests once one fails (the verdict is the same, only `detail` differs)."""
    allow_unisolated: bool = False
    """Run model-written code even where neither bubblewrap nor Linux namespaces work, i.e. with NO network
    or filesystem isolation (refused by default; recorded in the manifest and the dataset card)."""


class CodeVerifier(Verifier):
    """Passes a record whose code passes every test of the record."""

    name = "code"
    Params = CodeParams

    def __init__(self, num_workers: int = 1, **params: Any):
        from distillkit.verify.sandbox import require_isolation

        super().__init__(num_workers, **params)
        self.isolation = require_isolation(self.params.allow_unisolated)  # refuses before any code runs

    def stats(self) -> dict[str, Any]:
        """For the manifest: which guard ran the code ("none" only with allow_unisolated)."""
        return {"isolation": self.isolation}

    def _run(self, code: str, stdin: str = ""):
        from distillkit.verify.sandbox import execute_code

        p = self.params
        return execute_code(code, stdin=stdin, timeout_s=p.timeout_s, memory_mb=p.memory_mb,
                            max_processes=p.max_processes, max_output_bytes=p.max_output_bytes,
                            isolation=self.isolation)

    def __call__(self, record: dict[str, Any]) -> Verdict:
        try:
            tests = json.loads(record.get("tests") or "[]")
        except json.JSONDecodeError as e:
            return Verdict(None, "bad_tests", str(e))
        if not tests:
            return Verdict(None, "no_tests")
        code = extract_code(answer_text(record))
        if code is None:
            return Verdict(False, "no_code_block")
        try:
            compile(code, "<solution>", "exec")
        except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
            return Verdict(False, "syntax_error", f"{type(e).__name__}: {e}")
        passed, first_failure = 0, None
        for i, test in enumerate(tests):
            kind = test.get("type", "assert")
            if kind == "stdio":
                res = self._run(code, stdin=test.get("input", ""))
                ok = res.success and _same_output(res.stdout, test.get("output", ""))
            elif kind == "assert":
                # A solution that exits early (sys.exit(0)) would skip the asserts and "pass": the
                # test only counts when a marker it cannot guess is printed after the asserts.
                marker = secrets.token_hex(8)
                res = self._run(code + "\n\n" + test.get("code", "") + f"\nprint({marker!r})")
                ok = res.success and marker in res.stdout
            else:
                return Verdict(None, "bad_tests", f"test {i} has unknown type {kind!r}")
            if ok:
                passed += 1
                continue
            if first_failure is None:
                first_failure = (i, res)
            if self.params.stop_at_first_failure:
                break
        if first_failure is None:
            return Verdict(True, "tests_passed", f"{passed}/{len(tests)}")
        i, res = first_failure
        detail = f"{passed}/{len(tests)} passed; test {i}: {res.error or 'wrong output'}"
        if res.timeout:
            return Verdict(False, "timeout", detail)
        if res.memory_exceeded:
            return Verdict(False, "memory_exceeded", detail)
        if res.output_truncated:
            return Verdict(False, "output_limit_exceeded", detail)
        return Verdict(False, "tests_failed", detail + ("\n" + res.stderr[-500:] if res.stderr else ""))

    def batch(self, records: Sequence[dict[str, Any]], on_done=None) -> list[Verdict]:
        if self.num_workers == 1 or len(records) <= 1:
            out = []
            for r in records:
                out.append(self(r))
                if on_done:
                    on_done(1)
            return out
        with ThreadPoolExecutor(self.num_workers) as ex:
            futures = [ex.submit(self, r) for r in records]
            out = []
            for f in futures:
                out.append(f.result())
                if on_done:
                    on_done(1)
            return out
