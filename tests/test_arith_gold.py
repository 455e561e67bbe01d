"""Gold worked solutions of the arithmetic generator: the CPU lab's stronger teacher trains on them
(recipes/lab/gold_teacher.yaml), so they must be right, in the lab's prompt, train-split only, and loadable as a
`train.sources` file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from distillkit.data.arith import ONE_SHOT_TEMPLATE, main, make_arith_problems, split_of
from distillkit.verify.verifiers.math import verify_math_answer

ROOT = Path(__file__).resolve().parents[1]


def test_gold_solutions_are_right_and_leave_the_problems_unchanged():
    plain = make_arith_problems(300, "train", seed=3, templates="varied")
    gold = make_arith_problems(300, "train", seed=3, templates="varied", with_solution=True)
    assert [{k: v for k, v in g.items() if k != "solution"} for g in gold] == plain  # same draw, one more field
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for row in gold:
        m = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)\. The answer is \\boxed\{(\d+)\}\.", row["solution"])
        assert m, row
        a, op, b, c, boxed = m.groups()
        assert ops[op](int(a), int(b)) == int(c) == int(boxed) == int(row["answer"])
        assert a in row["problem"] and b in row["problem"]  # the operands are the problem's numbers
        assert verify_math_answer(row["solution"], row["answer"]).passed


def test_the_command_writes_train_split_chats_in_the_lab_prompt_that_train_sources_read(tmp_path):
    from distillkit.config import validate_recipe
    from distillkit.data.sources import load_source, to_record

    out = tmp_path / "gold.jsonl"
    main([str(out), "--num", "50", "--seed", "1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 50 and len({r["id"] for r in rows}) == 50
    head, tail = ONE_SHOT_TEMPLATE.split("{problem}")
    for r in rows:
        assert r["prompt"].startswith(head) and r["prompt"].endswith(tail)
        assert split_of(r["prompt"][len(head):-len(tail)]) == "train"  # never a held-out problem
    held_out = {p["problem"] for p in make_arith_problems(400, "test", seed=0, templates="varied")}
    assert not held_out & {r["prompt"][len(head):-len(tail)] for r in rows}

    # the lab's teacher recipe reads it as its training mixture
    recipe = json.loads(json.dumps(__import__("yaml").safe_load((ROOT / "recipes/lab/gold_teacher.yaml").read_text())))
    recipe["train"]["sources"][0].update(path=str(out), count=50)
    recipe["output_dir"] = str(tmp_path / "run")
    cfg = validate_recipe(recipe)
    source = cfg.train.sources[0]
    loaded = load_source(source, cfg)
    rec = to_record(source, loaded[0], 0, trace=False)
    assert rec["messages"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert rec["completion"] == rows[0]["response"] and rec["completion"].endswith(f"\\boxed{{{rows[0]['answer']}}}.")
