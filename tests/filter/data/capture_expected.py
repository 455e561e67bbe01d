"""Recapture streaming_expected.json.gz with the filter before streaming (commit 6955f38).

    git worktree add /tmp/oldtree 6955f38
    cp distillkit/testing/traces.py /tmp/oldtree/distillkit/testing/
    cp tests/filter/streaming_case.py /tmp/oldtree/tests/filter/
    PYTHONPATH=/tmp/oldtree .venv/bin/python tests/filter/data/capture_expected.py /tmp/oldtree /tmp/capture-run
    git worktree remove --force /tmp/oldtree

Check that `distillkit.filter.dedup` has no `MinHasher` under that PYTHONPATH (the old code is the one run).
"""

import gzip
import json
import sys
from pathlib import Path

old_tree, root = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, str(old_tree / "tests" / "filter"))
from streaming_case import case_config, write_case_input  # noqa: E402

import distillkit.filter.dedup as dedup  # noqa: E402
from distillkit.filter.stage import run_filter  # noqa: E402
from distillkit.records import iter_records  # noqa: E402

assert not hasattr(dedup, "MinHasher"), "this is the streaming filter; set PYTHONPATH to the old worktree"
cfg = case_config(root)
write_case_input(cfg)
m = run_filter(cfg, show_progress=False)
out = cfg.stage_dir("filter")
records = {}
for folder, kept in ((out, True), (out / "rejected", False)):
    for r in iter_records(folder, columns=["id", "verdicts", "meta"]):
        records[r["id"]] = {"kept": kept, "verdicts": [[v["verifier"], v["passed"], v["reason"]] for v in r["verdicts"]],
                            "details": json.loads(r["meta"]).get("filter_details", {})}
with gzip.open(Path(__file__).parent / "streaming_expected.json.gz", "wt") as f:
    json.dump({"stats": m.stats, "counts": m.counts, "records": records}, f, sort_keys=True)
print(m.counts, m.stats["reasons"]["dedup"])
