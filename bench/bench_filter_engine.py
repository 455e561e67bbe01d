"""Verification throughput on datatrove's local executor with 2 workers vs the single-process filter (target >= 1.8x).

Run:  .venv/bin/python bench/bench_filter_engine.py [--math 1200] [--code 96] [--workdir /tmp/distillkit-bench-engine]

Two inputs, each verified twice, in the same run: by the filter in one process (`filter.executor.kind:
inline`, one math/code worker) and by `kind: local` with 2 datatrove workers (one math/code worker each).
Only the verification pass is timed: `timings.verify_span_s`, from the first shard's start to the last
shard's end (every shard read, judged and its judged file written), and `timings.verify_s`, the whole
pass with process and verifier start-up; dedup, selection and writing run once either way.
  math: R1-style records with bench_filter_math.py's (gold, boxed answer) pairs, all distinct (fractions, roots,
        sets, equations), so math-verify's pair cache never answers for it; 50 records per shard.
  code: records with a Python answer and 3 assert tests each, run in the sandbox (bubblewrap here);
        8 records per shard.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys
from distillkit.config import RecipeConfig
from distillkit.filter.stage import run_filter
m = run_filter(RecipeConfig.model_validate(json.loads(sys.argv[1])), overwrite=True, show_progress=False)
print(json.dumps({"verify_s": m.timings["verify_s"], "span_s": m.timings["verify_span_s"], "counts": m.counts,
                  "reasons": m.stats["reasons"]}))
"""


def math_records(num: int) -> list[dict]:
    """bench_filter_math's distinct (gold, answer) pairs as R1-style completions."""
    from bench_filter_math import make_records  # this folder is on sys.path when run as a script

    return [{"gold_answer": r["gold_answer"], "completion": f"Let me work it out step {i}.\n</think>\n\n{r['response']}"}
            for i, r in enumerate(make_records(num))]


def code_record(i: int, rng: random.Random) -> dict:
    a = rng.randint(1, 100)
    wrong = i % 5 == 0
    body = f"def f(x):\n    return x * {a}{' + 1' if wrong else ''}\n"
    tests = [{"type": "assert", "code": f"assert f({x}) == {x * a}"} for x in (1, 2, rng.randint(3, 50))]
    return {"tests": json.dumps(tests), "completion": f"Multiply by {a}.\n</think>\n\n```python\n{body}```"}


def write_input(folder: Path, kind: str, num: int, per_shard: int) -> None:
    from distillkit.records import StageOutput, make_record, record_features, split_reasoning

    rng = random.Random(0)
    out = StageOutput(folder, "generate", f"engine-{kind}-{num}", {})
    out.begin(overwrite=True)
    rows = []
    maths = math_records(num) if kind == "math" else []
    for i in range(num):
        extra = maths[i] if kind == "math" else code_record(i, rng)
        reasoning, response, closed = split_reasoning(extra["completion"], "<think>\n")
        rows.append(make_record(prompt_id=f"{kind}-{i}", problem=f"problem {i}", prefill="<think>\n",
                                reasoning=reasoning, response=response, reasoning_closed=closed, **extra))
    for k in range(0, num, per_shard):
        out.write_shard(k // per_shard, rows[k:k + per_shard], record_features())
    out.finish(counts={"records": num}, versions=["distillkit"])


def run(root: Path, kind: str, executor: dict) -> dict:
    verifiers = [{"kind": "math", "timeout_s": 30}] if kind == "math" else [{"kind": "code"}]
    recipe = {"name": "bench-engine", "output_dir": str(root), "filter": {
        "num_workers": 1, "verifiers": verifiers, "executor": executor,
        "dedup": {"exact": False, "near": {"enabled": False}}}}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--math", type=int, default=1200)
    ap.add_argument("--code", type=int, default=96)
    ap.add_argument("--workdir", default="/tmp/distillkit-bench-engine")
    args = ap.parse_args()
    for kind, num, per_shard in (("math", args.math, 50), ("code", args.code, 8)):
        if not num:
            continue
        root = Path(args.workdir) / kind
        shutil.rmtree(root, ignore_errors=True)
        write_input(root / "generate", kind, num, per_shard)
        one = run(root, kind, {"kind": "inline"})
        two = run(root, kind, {"kind": "local", "workers": 2})
        assert one["reasons"] == two["reasons"], (one["reasons"], two["reasons"])
        s1, s2 = num / one["span_s"], num / two["span_s"]
        t1, t2 = num / one["verify_s"], num / two["verify_s"]
        print(f"{kind}: {num} records; verifying (first shard start to last shard end): single process {s1:.1f} "
              f"rec/s, datatrove local 2 workers {s2:.1f} rec/s: {s2 / s1:.2f}x (target >= 1.8); with start-up "
              f"(processes, math-verify imports): {one['verify_s']:.1f} s vs {two['verify_s']:.1f} s, {t2 / t1:.2f}x; "
              f"verdicts {json.dumps(one['reasons'][kind])}", flush=True)


if __name__ == "__main__":
    main()
