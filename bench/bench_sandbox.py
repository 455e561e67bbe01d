"""Sandbox overhead per test case vs a bare subprocess running the same code.

Run:  .venv/bin/python bench/bench_sandbox.py [--num 30]
Both run `python -I main.py` on a small stdin-sum program; the sandbox adds bubblewrap (or unshare),
rlimits, the uid drop, a temp dir and capped pipes. Prints ms per test case and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CODE = "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n"
STDIN = " ".join(map(str, range(1000))) + "\n"


def bare(num: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "main.py")
        with open(path, "w") as f:
            f.write(CODE)
        t0 = time.perf_counter()
        for _ in range(num):
            out = subprocess.run([sys.executable, "-I", path], input=STDIN, capture_output=True, text=True, timeout=10)
            assert out.stdout.strip() == "499500"
        return (time.perf_counter() - t0) / num


def sandboxed(num: int) -> tuple[float, str]:
    from distillkit.verify.sandbox import execute_code, isolation_mode

    mode = isolation_mode()  # probed once, outside the timing
    t0 = time.perf_counter()
    for _ in range(num):
        res = execute_code(CODE, stdin=STDIN)
        assert res.stdout.strip() == "499500", res
    return (time.perf_counter() - t0) / num, mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=30)
    args = ap.parse_args()
    b = bare(args.num)
    s, mode = sandboxed(args.num)
    print(f"sandbox ({mode}): {s * 1000:.1f} ms per test case; bare subprocess {b * 1000:.1f} ms; "
          f"overhead {(s - b) * 1000:.1f} ms, ratio {s / b:.2f}x")


if __name__ == "__main__":
    main()
