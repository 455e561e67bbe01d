"""Math verification throughput with 1 vs 2 worker processes (target ratio >= 1.8).

Run:  .venv/bin/python bench/bench_filter_math.py [--num 400]
Every record has a distinct (gold, answer) pair, so the verifier's pair cache does not help; worker
start-up (importing math-verify) is excluded by warming each pool first. Prints records/s and the ratio.
"""

from __future__ import annotations

import argparse
import random
import time


def make_records(num: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    recs = []
    for i in range(num):
        a, b = rng.randint(1, 500), rng.randint(2, 97)
        kind = i % 4
        if kind == 0:
            gold, ans = f"\\frac{{{a}}}{{{b}}}", f"{a / b:.6f}" if rng.random() < 0.5 else f"{a}/{b}"
        elif kind == 1:
            gold, ans = f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}"
        elif kind == 2:
            gold, ans = f"\\{{{a},{b},{a + b}\\}}", f"\\{{{a + b},{a},{b + rng.randint(0, 1)}\\}}"
        else:
            gold, ans = f"x = {a}", f"{a + rng.randint(0, 1)}"
        recs.append({"gold_answer": gold, "response": f"So the answer is \\boxed{{{ans}}}.", "reasoning_closed": True})
    return recs


def measure(num_workers: int, records: list[dict]) -> float:
    from distillkit.verify.verifiers.math import MathVerifier

    with MathVerifier(num_workers=num_workers, timeout_s=30) as v:
        v.batch(make_records(4 * num_workers, seed=99))  # start and warm every worker
        t0 = time.perf_counter()
        verdicts = v.batch(records)
        dt = time.perf_counter() - t0
    assert all(x.reason in ("correct", "wrong_answer") for x in verdicts), {x.reason for x in verdicts}
    return len(records) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=400)
    args = ap.parse_args()
    records = make_records(args.num)
    one = measure(1, records)
    two = measure(2, records)
    print(f"math verification, {args.num} distinct pairs: 1 worker {one:.1f} rec/s, 2 workers {two:.1f} rec/s, "
          f"ratio {two / one:.2f}x (target >= 1.8)")


if __name__ == "__main__":
    main()
