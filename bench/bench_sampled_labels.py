"""Sampled soft labels (sampled-v1) against top-k (packed-v1, fp16): decode cost per token, the training cache, and
trainer tokens/s (issue 33, item 4 rows for sampled labels).

Run (CPU; FOLDER: a finished generate output of SmolLM2-135M-Instruct with top-20 labels, e.g. a quickstart's or
the lab's runs/.../generate; the first --records records are used):
    nice -n 19 .venv/bin/python bench/bench_sampled_labels.py --real FOLDER [--records 256] [--samples 32]
        [--reps 5] [--steps 4] [--layers 4]

The records' traces are scored again by SmolLM2-135M on transformers (the `score` stage's scorer, bf16) as sampled
labels of --samples draws; their top-20 labels are written again as packed-v1 and as fp16, each by distillkit's
writer, so all three formats hold the same positions. Prints one JSON object:
  tokens            generated tokens of the records used
  disk_bytes        soft-label bytes on disk per token (Parquet zstd) of each format
  decode_ns         per token, the fastest of --reps (and the median), in one process, formats interleaved:
                      codec   the label column (in memory) -> (T, width) int32 ids and float32 logprobs: decode_column
                              (packed-v1), decode_sampled_column (sampled-v1), the fixed-size lists reshaped and cast
                              (fp16, what the readers do with them)
                      read    the whole read path a data loader runs: StageRecords over the folder (Parquet, every
                              column, the decode, one dict per record)
                    and the ratios of each to fp16 and to packed-v1
  cache             the training cache (examples.arrow) per token: top-20 rows, sampled rows cut to their drawn ids
                    (what build_train_dataset writes), sampled rows kept N wide (the layout before), and the mean ids
                    per labelled position
  train             DistillTrainer, SmolLM2's first --layers layers, packed 4 x 512, alpha 0.5, --steps timed steps
                    after one warm-up step: top-20 `topk_tail` vs `sampled`, --train-runs runs alternating ABBA ABBA..
                    (a drifting load cancels); per run tokens per wall second and per CPU second of the process (less
                    sensitive to other jobs on the box), and the sampled / top-k ratios of their medians

--work DIR keeps the folders there and reuses DIR/sampled (the scoring, the slow part) when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
K = 20


def write_folder(rows: list[dict], folder: Path, width: int, fmt: str) -> Path:
    """The rows as a finished stage output of one format (one shard per 256 records, as stages write them)."""
    from distillkit.records import StageOutput, record_features

    stage = StageOutput(folder, "generate", f"bench-{fmt}")
    stage.begin(overwrite=True)
    for i in range(0, len(rows), 256):
        stage.write_shard(i // 256, rows[i:i + 256], record_features(width, fmt))
    stage.finish(counts={"records": len(rows)}, versions=["distillkit"])
    return folder


def score_sampled(records: list[dict], samples: int) -> list[dict]:
    """The records scored by SmolLM2-135M (transformers, bf16) as sampled labels of `samples` draws per token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.engines.hf_scorer import TransformersScorer
    from distillkit.models import resolve_model
    from distillkit.records import record_features
    from distillkit.score.stage import score_shard

    path = resolve_model("builtin:smollm2-135m-instruct")
    scorer = TransformersScorer(AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval(),
                                AutoTokenizer.from_pretrained(path), seed=0)
    rows, skipped = score_shard(records, scorer, samples, "smollm2", record_features(samples, "sampled-v1"),
                                num_samples=samples)
    if skipped:
        print(f"{len(skipped)} records skipped by the scorer", file=sys.stderr)
    return rows


def decode_costs(folders: dict[str, Path], tokens: int, reps: int) -> dict:
    """ns per token of the codec alone and of the whole read path, per format, formats interleaved in each rep."""
    import numpy as np
    import pyarrow.parquet as pq

    from distillkit.records import StageRecords, list_shards
    from distillkit.softlabels import decode_column, decode_sampled_column

    tables = {fmt: [pq.read_table(s) for s in list_shards(f)] for fmt, f in folders.items()}

    def codec(fmt: str) -> None:
        for t in tables[fmt]:
            completion = t.column("completion_ids")
            if fmt == "packed-v1":
                decode_column(t.column("soft_labels"), completion)
            elif fmt == "sampled-v1":
                decode_sampled_column(t.column("sampled_labels"), completion)
            else:  # fixed-size lists: one flat buffer each, reshaped; the fp16 logprobs cast to float32
                ids, lps = t.column("topk_ids").combine_chunks(), t.column("topk_logprobs").combine_chunks()
                ids.values.values.to_numpy().reshape(-1, K)
                lps.values.values.to_numpy().reshape(-1, K).astype(np.float32)

    def read(fmt: str) -> None:
        for _ in StageRecords(folders[fmt]):
            pass

    out: dict = {}
    for name, fn in (("codec", codec), ("read", read)):
        times: dict[str, list[float]] = {fmt: [] for fmt in folders}
        for _ in range(reps):
            for fmt in folders:
                t0 = time.perf_counter()
                fn(fmt)
                times[fmt].append(time.perf_counter() - t0)
        # the fastest rep: on a shared box the others measure the other jobs (the median is printed too)
        ns = {fmt: min(v) / tokens * 1e9 for fmt, v in times.items()}
        out[name] = {fmt: round(v) for fmt, v in ns.items()}
        out[name + "_median"] = {fmt: round(statistics.median(v) / tokens * 1e9) for fmt, v in times.items()}
        out[name + "_ratio_vs_fp16"] = {fmt: round(v / ns["fp16"], 2) for fmt, v in ns.items()}
        out[name + "_ratio_vs_packed"] = {fmt: round(v / ns["packed-v1"], 2) for fmt, v in ns.items()}
    return out


def cache_sizes(folders: dict[str, Path], tok, work: Path) -> dict:
    """examples.arrow bytes per token (all tokens: prompts too) of the datasets the trainer would build."""
    import numpy as np

    from distillkit.records import StageRecords
    from distillkit.train.data import build_train_dataset

    out = {}
    full = [{**r, "token_logprobs": None} for r in StageRecords(folders["sampled-v1"])]  # read as top-k: N wide
    for name, records, probs in (("topk_k20", StageRecords(folders["packed-v1"]), "topk_tail"),
                                 ("sampled_ragged", StageRecords(folders["sampled-v1"]), "sampled"),
                                 ("sampled_full_width", full, None)):
        ds, info = build_train_dataset(records, tok, 512, use_kd=True, packing=False, cache_dir=work / name,
                                       teacher_probs=probs)
        out[name] = round((work / name / "examples.arrow").stat().st_size / info["num_tokens"], 1)
        if name == "sampled_ragged":
            widths = [len(row) for ex in ds for row, on in zip(ex["kd_ids"], ex["kd_mask"]) if on]
            out["sampled_ids_per_labelled_position"] = round(float(np.mean(widths)), 2)
            out["sampled_max_ids_per_position"] = int(np.max(widths))
    return out


class Clock:
    """A TrainerCallback timing the steps after the first (warm-up) one, in wall seconds and in CPU seconds of this
    process (all its threads)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _C(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 1:
                    self.start = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen)

            def on_train_end(self, args, state, control, **kw):
                wall, cpu, tokens = self.start
                self.tokens = state.num_input_tokens_seen - tokens
                self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu
        return _C()


def train_tokens_per_s(folders: dict[str, Path], steps: int, layers: int, runs: int, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from distillkit.config import KDConfig
    from distillkit.records import StageRecords
    from distillkit.train.batches import DistillCollator
    from distillkit.train.data import build_train_dataset
    from distillkit.train.trainer import DistillTrainer

    torch.set_flush_denormal(True)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_softlabels import bench_student

    init, tok, common = bench_student(work, layers, steps)
    arms = {"topk": ("packed-v1", "topk_tail"), "sampled": ("sampled-v1", "sampled")}
    wall: dict[str, list[float]] = {arm: [] for arm in arms}
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    widths: dict[str, list[int]] = {arm: [] for arm in arms}
    order = [("topk", "sampled", "sampled", "topk")[i % 4] for i in range(runs)]
    for rep, arm in enumerate(order):
        fmt, probs = arms[arm]
        ds, _ = build_train_dataset(StageRecords(folders[fmt]), tok, 512, use_kd=True, packing=True,
                                    cache_dir=work / f"data-{rep}", teacher_probs=probs)
        collator = DistillCollator(tok.pad_token_id, padding_free=True)
        widths[arm].append(int(collator([ds[i] for i in range(min(4, len(ds)))])["kd_ids"].shape[-1]))
        timer = Clock()
        trainer = DistillTrainer(
            model=AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32),
            args=SFTConfig(output_dir=str(work / f"run-{rep}"), **common), train_dataset=ds, processing_class=tok,
            callbacks=[timer], data_collator=collator,
            kd=KDConfig(enabled=True, alpha=0.5, teacher_probs=probs, chunk_size=1024))
        trainer.train()
        wall[arm].append(timer.tokens / timer.wall)
        cpu[arm].append(timer.tokens / timer.cpu)
    med = {name: {arm: statistics.median(v) for arm, v in d.items()} for name, d in (("wall", wall), ("cpu", cpu))}
    return {"order": order,
            "tokens_per_wall_s": {arm: [round(x, 1) for x in v] for arm, v in wall.items()},
            "tokens_per_cpu_s": {arm: [round(x, 1) for x in v] for arm, v in cpu.items()},
            "ratio_sampled_vs_topk_wall": round(med["wall"]["sampled"] / med["wall"]["topk"], 3),
            "ratio_sampled_vs_topk_cpu": round(med["cpu"]["sampled"] / med["cpu"]["topk"], 3),
            "first_batch_label_width": {arm: v[0] for arm, v in widths.items()},
            "steps_timed": steps, "layers": layers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", required=True, help="a generate output of SmolLM2 with top-20 soft labels")
    ap.add_argument("--records", type=int, default=256, help="records of it to use (the first ones)")
    ap.add_argument("--samples", type=int, default=32, help="draws per position N of the sampled labels")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per training run")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--train-runs", type=int, default=8, help="training runs, alternating top-k and sampled (ABBA)")
    ap.add_argument("--no-train", action="store_true", help="skip the trainer comparison")
    ap.add_argument("--work", help="folder for the outputs (default: a new temporary one); its scored labels are reused")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from distillkit.models import resolve_model
    from distillkit.records import StageRecords, list_shards, soft_label_bytes

    load_start = os.getloadavg()[0]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_sampled_labels_"))
    records = StageRecords(Path(args.real)).head(args.records)
    if not records or records[0].get("topk_ids") is None or len(records[0]["topk_ids"][0]) != K:
        raise SystemExit(f"{args.real}: expected top-{K} soft labels")
    t0 = time.perf_counter()
    if (work / "sampled" / "manifest.json").exists():
        sampled = list(StageRecords(work / "sampled"))
        if len(sampled) > len(records) or sampled[0]["topk_ids"].shape[1] != args.samples:
            raise SystemExit(f"{work / 'sampled'} holds other labels than --records/--samples ask; use another --work")
    else:
        sampled = score_sampled(records, args.samples)
    score_s = time.perf_counter() - t0
    scored_ids = {r["id"] for r in sampled}
    topk = [r for r in records if r["id"] in scored_ids]  # the same records, so the same positions
    tokens = sum(int(r["completion_tokens"]) for r in topk)
    assert tokens == sum(int(r["completion_tokens"]) for r in sampled), "scoring changed the tokens"
    folders = {"fp16": write_folder(topk, work / "fp16", K, "fp16"),
               "packed-v1": write_folder(topk, work / "packed", K, "packed-v1"),
               "sampled-v1": write_folder(sampled, work / "sampled", args.samples, "sampled-v1")}
    report: dict = {"real": str(args.real), "records": len(topk), "tokens": tokens, "samples": args.samples,
                    "score_s": round(score_s, 1)}
    report["disk_bytes"] = {fmt: round(sum(soft_label_bytes(s) for s in list_shards(f)) / tokens, 2)
                            for fmt, f in folders.items()}
    report["decode_ns"] = decode_costs(folders, tokens, args.reps)
    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    report["cache_bytes_per_token"] = cache_sizes(folders, tok, work / "cache")
    if not args.no_train:
        report["train"] = train_tokens_per_s(folders, args.steps, args.layers, args.train_runs, work / "train")
    report["load_average"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
