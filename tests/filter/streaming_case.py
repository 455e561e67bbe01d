"""The input and config of the streaming-filter equality test (tests/filter/test_streaming.py).

`data/streaming_expected.json.gz` holds what the filter before streaming (commit 6955f38, one list of
all records in memory) produced on this input: every record's kept flag, verdicts and details, and the
manifest stats. Changing the input or the config here invalidates it: recapture with
`data/capture_expected.py` (it says how). Near copies change one word (Jaccard ~0.99), so both
filters' MinHash LSH find all of them despite their different hash functions.
"""

from pathlib import Path

from distillkit.config import RecipeConfig
from distillkit.testing.traces import synthetic_record, write_synthetic_run

NUM, SAMPLES, SHARD = 2400, 6, 250  # prompts cross shard boundaries


def case_config(root) -> RecipeConfig:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    bench = root / "bench.txt"
    # Three of the synthetic problems, as a benchmark would quote them: their prompts are contaminated.
    bench.write_text("\n".join(synthetic_record(i * SAMPLES, samples=SAMPLES, chars=1500)["problem"][:160]
                               for i in (3, 77, 301)) + "\n")
    return RecipeConfig.model_validate({
        "name": "streaming-case", "output_dir": str(root / "run"),
        "filter": {"num_workers": 2,
                   "decontaminate": {"enabled": True, "benchmarks": [{"path": str(bench)}]},
                   "selection": {"policy": "max_k", "k": 3, "min_pass_rate": 0.2, "max_pass_rate": 0.95}},
    })


def write_case_input(cfg: RecipeConfig) -> None:
    write_synthetic_run(cfg.stage_dir("generate"), NUM, shard_size=SHARD, samples=SAMPLES, chars=1500)
