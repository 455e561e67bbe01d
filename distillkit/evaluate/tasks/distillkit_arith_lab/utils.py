"""lm-eval hooks of the distillkit_arith task (lm-eval resolves `!function utils.x` next to the YAML)."""

from pathlib import Path

from distillkit.evaluate.scoring import keep_all_samples, process_math_samples  # noqa: F401

DATA = Path(__file__).with_name("distillkit_arith_lab.jsonl")


def load_docs(**kwargs):
    """The shipped held-out problems as {"test": Dataset}; kwargs (lm-eval metadata) are ignored."""
    import json

    import datasets

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
