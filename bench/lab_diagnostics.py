"""Why an arm of the CPU lab scores what it does: two read-only looks at a finished `distillkit compare` folder.

1. The teacher's stored soft labels on the kept traces, by kind of position: the answer inside \\boxed{}, the
   result of the worked step ("= N"), every other token. For each: the teacher's probability of the token the
   trace holds (kept traces are correct, so at the answer this is the probability of the right digit), how often
   that token is the teacher's argmax, and the share of positions where the teacher put < 0.5 on it. This is what
   a forward-KL term pulls the student toward, next to the one-hot target of SFT.
2. pass@1 per template of the held-out sets: the teacher against an arm's students (mean over seeds), from the
   lm-eval samples every run keeps. Shows where an arm gains or loses against its teacher.

    .venv/bin/python bench/lab_diagnostics.py runs/lab-sft-vs-kd/compare --arm sft

Nothing is trained or generated; it reads parquet shards and jsonl samples (seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def answer_token_confidence(kept: Path, model: str) -> dict[str, dict[str, float]]:
    """Per kind of position (answer / result / other): the teacher's stored probability of the trace's token."""
    from transformers import AutoTokenizer

    from distillkit.models import resolve_model
    from distillkit.records import iter_records

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    rows: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for rec in iter_records(kept, columns=["completion_ids", "topk_ids", "topk_logprobs"]):
        ids = list(rec["completion_ids"])
        pieces = [tok.decode(ids[: i + 1]) for i in range(len(ids))]
        starts = [0] + [len(p) for p in pieces[:-1]]
        text = pieces[-1] if pieces else ""
        boxed = [m.span(1) for m in re.finditer(r"\\boxed\{([^}]*)\}", text)]
        results = [m.span(1) for m in re.finditer(r"=\s*(\d+)", text)]
        for pos, (start, piece) in enumerate(zip(starts, pieces)):
            token_text = piece[start:]
            if pos >= len(rec["topk_ids"]) or not token_text:
                continue
            cand = dict(zip((int(i) for i in rec["topk_ids"][pos]), (float(x) for x in rec["topk_logprobs"][pos])))
            p_own = math.exp(cand[ids[pos]]) if ids[pos] in cand else 0.0
            is_argmax = ids[pos] == max(cand, key=cand.get)
            digit = token_text.strip().isdigit()
            kind = ("answer" if digit and any(a <= start < b for a, b in boxed) else
                    "result" if digit and any(a <= start < b for a, b in results) else "other")
            rows[kind].append((p_own, is_argmax))
    out = {}
    for kind in ("answer", "result", "other"):
        p = np.array([r[0] for r in rows[kind]])
        out[kind] = {"positions": len(p), "p_mean": float(p.mean()), "p_median": float(np.median(p)),
                     "share_p_below_half": float((p < 0.5).mean()),
                     "share_argmax": float(np.mean([r[1] for r in rows[kind]]))}
    return out


def _template_pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(?:name|a|b)\}", template)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


def per_template(compare: Path, arm: str, task: str, templates: list) -> list[tuple[str, int, float, float]]:
    """(template, questions, teacher pass@1, the arm's mean pass@1 over seeds) per template of `task`."""
    def load(path: Path) -> dict[str, dict]:
        return {r["doc"]["id"]: r for r in map(json.loads, path.read_text().splitlines())}

    teacher = load(next(compare.glob(f"runs/*/seed-0/evaluate/samples/teacher/{task}.jsonl")))
    students = [load(p) for p in sorted(compare.glob(f"runs/{arm}/seed-*/evaluate/samples/student_after/{task}.jsonl"))]
    patterns = [_template_pattern(t) for t, _ in templates]
    sums: dict[int, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for doc_id, row in teacher.items():
        which = next(i for i, p in enumerate(patterns) if p.match(row["doc"]["problem"]))
        sums[which][0] += 1
        sums[which][1] += row["pass@1"]
        sums[which][2] += sum(s[doc_id]["pass@1"] for s in students) / len(students)
    return [(templates[i][0], int(n), t / n, s / n) for i, (n, t, s) in sorted(sums.items())]


def main() -> None:
    from distillkit.data.arith import UNSEEN_TEMPLATES, VARIED_TEMPLATES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("compare", type=Path, help="a compare folder (OUTPUT_DIR/compare)")
    ap.add_argument("--arm", default="sft", help="the arm whose students are broken down per template")
    ap.add_argument("--teacher", default="builtin:smollm2-135m-instruct", help="the teacher's model (its tokenizer)")
    args = ap.parse_args()
    kept = next(args.compare.glob("shared/filter-*"))
    print(f"## Teacher's stored probability of the kept traces' tokens ({kept.name})\n")
    print("| position | n | p mean | p median | share p < 0.5 | token = teacher's argmax |\n|---|---|---|---|---|---|")
    for kind, s in answer_token_confidence(kept, args.teacher).items():
        print(f"| {kind} | {s['positions']} | {s['p_mean']:.3f} | {s['p_median']:.3f} | {s['share_p_below_half']:.1%} "
              f"| {s['share_argmax']:.1%} |")
    for task, templates in (("distillkit_arith_lab", VARIED_TEMPLATES), ("distillkit_arith_unseen", UNSEEN_TEMPLATES)):
        print(f"\n## {task}: teacher vs {args.arm} (mean over seeds), pass@1 in points\n")
        print("| template | n | teacher | student | difference |\n|---|---|---|---|---|")
        for template, n, t, s in per_template(args.compare, args.arm, task, templates):
            print(f"| {template} | {n} | {100 * t:.1f} | {100 * s:.1f} | {100 * (s - t):+.1f} |")


if __name__ == "__main__":
    main()
