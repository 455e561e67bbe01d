"""Filter peak memory and speed at two dataset sizes (target: peak RSS at the larger size <= 1.3x the smaller).

Run:  .venv/bin/python bench/bench_filter_scale.py [--sizes 10000,100000] [--tokens 8192] [--topk 20]
          [--arrays periodic] [--workdir /tmp/distillkit-bench-scale]

Records are synthetic R1 samples (distillkit/testing/traces.py): ~4 characters per token of `<think>`
arithmetic reasoning, a boxed answer (18% wrong, 7% truncated, 5% exact and 5% near copies), 4 samples per
prompt, `--tokens` completion ids and (tokens, topk) soft labels. `--arrays periodic` gives the soft labels
their full in-memory size but makes them compress to almost nothing on disk: 100k records of real-looking
random ones would take ~70 GB, more than this machine's disk. (Memory is what is measured here: Arrow
decodes either kind to the same buffers.) Bytes on disk per kept record and token are printed too: run
`--sizes 2000 --arrays random` for the figure with incompressible soft labels. Inputs are written once
per setting and reused.

The filter runs in a child process per size with math verification (2 workers), exact and near dedup and
max_k selection; the child reports its own peak RSS (ru_maxrss: the filter process, not its math-verify
workers, which do not grow with the dataset), records/s, and where the time went.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHARD = 256
CHILD = r"""
import json, resource, sys, time
from distillkit.config import RecipeConfig
from distillkit.filter.stage import run_filter
cfg = RecipeConfig.model_validate(json.loads(sys.argv[1]))
t0 = time.time()
m = run_filter(cfg, overwrite=True, show_progress=False)
print(json.dumps({"seconds": time.time() - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "counts": m.counts, "timings": m.timings}))
"""


def _write_shards(args) -> None:
    folder, indices, num, kwargs = args
    from distillkit.records import record_features, write_shard
    from distillkit.testing.traces import synthetic_record

    features = record_features(kwargs.get("topk", 0))
    for k in indices:
        rows = [synthetic_record(i, **kwargs) for i in range(k * SHARD, min(num, (k + 1) * SHARD))]
        write_shard(folder, k, rows, features)


def make_input(folder: Path, num: int, procs: int, **kwargs) -> Path:
    """A finished generate folder of `num` synthetic records, written by `procs` processes; reused when present."""
    from distillkit.records import StageOutput, read_manifest

    tag = f"synthetic-{num}-{json.dumps(kwargs, sort_keys=True)}"
    m = read_manifest(folder)
    if m is not None and m.config_hash == tag:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    out = StageOutput(folder, "generate", tag, {"synthetic": kwargs})
    out.begin()
    shards = list(range((num + SHARD - 1) // SHARD))
    t0 = time.time()
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_write_shards, [(folder, shards[p::procs], num, kwargs) for p in range(procs)])
    out.finish(counts={"records": num}, versions=["distillkit"])
    print(f"  wrote {num} records in {time.time() - t0:.0f} s", flush=True)
    return folder


def recipe(run_dir: Path) -> dict:
    return {"name": "bench-scale", "output_dir": str(run_dir), "filter": {
        "num_workers": 2,
        "verifiers": [{"kind": "truncation"}, {"kind": "format"}, {"kind": "math"}, {"kind": "length", "max_tokens": 65536}],
        "selection": {"policy": "max_k", "k": 2}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--topk", type=int, default=20)
    ap.add_argument("--arrays", default="periodic", choices=["periodic", "random"])
    ap.add_argument("--procs", type=int, default=2, help="processes writing the synthetic input")
    ap.add_argument("--workdir", default="/tmp/distillkit-bench-scale")
    args = ap.parse_args()
    kwargs = {"samples": 4, "chars": 4 * args.tokens, "tokens": args.tokens, "topk": args.topk, "arrays": args.arrays}
    results = []
    for num in [int(x) for x in args.sizes.split(",")]:
        root = Path(args.workdir) / f"n{num}-t{args.tokens}-k{args.topk}-{args.arrays}"
        print(f"{num} records:", flush=True)
        make_input(root / "generate", num, args.procs, **kwargs)
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe(root))], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["records"] = num
        results.append(r)
        t = r["timings"]
        print(f"  peak RSS {r['peak_rss_mb']:.0f} MB, {num / r['seconds']:.0f} records/s ({r['seconds']:.0f} s: "
              f"verify {t.get('verify_s', 0):.0f} s, dedup {t.get('dedup_s', 0):.1f} s, write {t.get('write_s', 0):.0f} s); "
              f"kept {r['counts']['kept']}", flush=True)
        kept_bytes = sum(p.stat().st_size for p in (root / "filter").glob("shard-*.parquet"))
        kept = max(1, r["counts"]["kept"])
        print(f"  kept shards on disk: {kept_bytes / kept / 1024:.0f} KB per record, {kept_bytes / kept / args.tokens:.1f} "
              f"bytes per token ({args.arrays} soft labels, top-{args.topk}, zstd)", flush=True)
        shutil.rmtree(root / "filter", ignore_errors=True)  # outputs are as large as the input
    if len(results) >= 2:
        a, b = results[0], results[-1]
        print(f"peak RSS {b['records']} vs {a['records']} records: {b['peak_rss_mb']:.0f} / {a['peak_rss_mb']:.0f} MB = "
              f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x (target <= 1.3); "
              f"{(b['peak_rss_mb'] - a['peak_rss_mb']) * 1024 / (b['records'] - a['records']):.2f} KB per extra record")


if __name__ == "__main__":
    main()
