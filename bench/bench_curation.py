"""Question curation on the quickstart at a fixed teacher-token budget: held-out pass@1 with and without
pre-screen + difficulty band + resampling (issue 20's figure).

Run:  .venv/bin/python bench/bench_curation.py [--baseline runs/quickstart] [--out runs/quickstart-curated]
      [--prompts 43]

Baseline: the quickstart as shipped (64 prompts x n=4; reused when `--baseline` holds a finished run of the
same config, else run there). Curated: the same recipe with
  generate.prescreen   the pruned student answers each prompt 4 times; prompts it solves 3 of 4 are dropped
  generate.resample    prompts with no verified sample get up to 2 more rounds of 4 samples
  filter.selection     max_pass_rate 0.99: prompts the teacher always solves are dropped
and fewer prompts (`--prompts`), chosen so that the teacher generates about as many tokens as the baseline
(resampling costs ~1.5x samples per prompt at this teacher's ~30% pass rate). Both arms train the same
student the same way and are scored on the same 60 held-out questions x 2 samples; the table gives each
arm's teacher tokens, kept traces, pass@1 ± se, and the paired difference over questions. Finished stages
are reused; after a change to the curated arm's config, delete `--out` (the run refuses to mix configs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def arm(output_dir: str, overrides: list[str]) -> dict:
    from distillkit.config import load_recipe
    from distillkit.pipeline import run_pipeline
    from distillkit.records import read_manifest

    cfg = load_recipe(None, [f"output_dir={output_dir}", "stages=[generate, filter, train, evaluate]", *overrides])
    run_pipeline(cfg)
    gen, filt = read_manifest(cfg.stage_dir("generate")), read_manifest(cfg.stage_dir("filter"))
    res = json.loads((cfg.stage_dir("evaluate") / "results.json").read_text())
    after = res["models"]["student_after"]["tasks"]["distillkit_arith"]
    return {"dir": output_dir, "prompts": gen.counts["prompts"], "teacher_tokens": gen.counts["tokens"],
            "samples": gen.counts["samples"], "kept": filt.counts["kept"], "prompts_kept": filt.counts["prompts_kept"],
            "pass_at_1": after["pass_at_1"], "stderr": after["stderr"], "task": after,
            "prescreen": gen.stats.get("prescreen"), "resample": gen.stats.get("resample"),
            "selection": (filt.stats or {}).get("selection"), "generate_s": gen.timings.get("generate_s")}


def paired(a: dict, b: dict) -> tuple[float, float]:
    """a - b over shared questions and its paired standard error (tasks as results.json holds them)."""
    from distillkit.schemas.evaluate import paired_difference
    from distillkit.schemas.evaluate import TaskScore

    diff, se, _ = paired_difference(TaskScore.model_validate(a), TaskScore.model_validate(b))
    return diff, se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="runs/quickstart")
    ap.add_argument("--out", default="runs/quickstart-curated")
    ap.add_argument("--prompts", type=int, default=43)
    args = ap.parse_args()
    base = arm(args.baseline, [])
    cur = arm(args.out, [f"generate.prompts.builtin_args={{num: {args.prompts}, split: train, seed: 0}}",
                         "generate.prescreen.enabled=true", "generate.prescreen.samples=4",
                         "generate.prescreen.solved_at=0.75", "generate.resample.rounds=2",
                         "filter.selection.max_pass_rate=0.99", "evaluate.models=[student_after]"])
    diff, se = paired(cur["task"], base["task"])
    print("| arm | prompts sampled | teacher tokens | samples | kept traces (prompts) | held-out pass@1 |")
    print("|---|---|---|---|---|---|")
    for name, r in (("baseline", base), ("curated", cur)):
        print(f"| {name} | {r['prompts']} | {r['teacher_tokens']:,} | {r['samples']} | {r['kept']} ({r['prompts_kept']}) | "
              f"{100 * r['pass_at_1']:.1f} ± {100 * r['stderr']:.1f} |")
    print(f"\ncurated - baseline, paired over {len(cur['task']['per_question'])} questions: {100 * diff:+.1f} ± {100 * se:.1f} points; "
          f"teacher tokens {cur['teacher_tokens'] / base['teacher_tokens']:.2f}x")
    print("pre-screen:", json.dumps(cur["prescreen"]))
    print("resample:", json.dumps(cur["resample"]))
    print("selection:", json.dumps(cur["selection"]))


if __name__ == "__main__":
    main()
