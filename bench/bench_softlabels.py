"""Soft-label storage, packed-v1 vs fp16 (issue 33): bytes per token, reconstruction error, decode cost, trainer tokens/s.

Run (CPU; with --real an existing stage folder of SmolLM2 top-20 labels, e.g. runs/quickstart/generate, else it
generates one with vLLM first, ~2 minutes on 2 cores):
    .venv/bin/python bench/bench_softlabels.py [--real FOLDER] [--steps 8] [--layers 8] [--sampled 8,16,32,64]

Prints one JSON object:
  bytes_per_token   soft-label bytes on disk per generated token, each format written by distillkit's writer from
                    the same records: the real SmolLM2 records (49,152-id vocabulary) and LM-shaped synthetic
                    records over 152,064 ids drawn uniformly (incompressible ids: the worst case; 4 x 8k tokens)
  kl                mean / p99 KL(fp16 labels || decoded), nats per position (k + 1 buckets), both cases
  ns_per_token      encode (writer) and decode (StageRecords' batch path, what the trainer's data loader runs) per
                    token, median of --reps, on the synthetic 152k records
  train             DistillTrainer (SmolLM2's first --layers layers, top-k tail KD, alpha 0.5) on the real records
                    from an fp16 folder and a packed folder, in the order fp16, packed, packed, fp16; tokens/s per run,
                    the packed/fp16 ratio of the means, and the ratio of dataset-build times (decoding happens there)
  sampled           with --sampled N,...: the real records scored again by SmolLM2 on transformers (the `score`
                    stage's scorer, bf16), as sampled labels of N draws (sampled-v1) and as top-k at k = N
                    (packed-v1), each written by the writer: bytes per token of both, and per position the mean
                    number of distinct ids drawn and the share where the trace's own token was drawn
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

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
K = 20


def generate_real(folder: Path, prompts: int) -> Path:
    """A generate run of SmolLM2-135M-Instruct: arithmetic prompts x 4 samples x <= 96 tokens, top-20 labels (fp16)."""
    from distillkit.config import validate_recipe
    from distillkit.generate.stage import run_generate

    cfg = validate_recipe({"name": "bench", "output_dir": str(folder), "generate": {
        "teacher": {"model": "builtin:smollm2-135m-instruct",
                    "vllm": {"max_model_len": 1024, "enforce_eager": True}},
        "prompts": {"builtin": "arith", "builtin_args": {"num": prompts}},
        "sampling": {"n": 4, "max_tokens": 96, "temperature": 0.6, "topk_logprobs": K, "seed": 0},
        "shard_size": 64, "soft_label_format": "fp16"}})
    run_generate(cfg)
    return cfg.stage_dir("generate")


def synthetic_records(vocab: int = 152_064, num: int = 4, tokens: int = 8_192) -> list[dict]:
    from distillkit.records import make_record
    from distillkit.testing.traces import lm_soft_labels

    out = []
    for r in range(num):
        ids, lp, sampled = lm_soft_labels(tokens, K, vocab, seed=r)
        out.append(make_record(prompt_id=f"s{r}", problem="", completion_ids=sampled, completion_tokens=tokens,
                               topk_ids=ids, topk_logprobs=lp))
    return out


def write_both(records: list[dict], folder: Path) -> dict[str, Path]:
    """The records as a finished stage output in each format (one shard per 256 records, as stages write them)."""
    from distillkit.records import StageOutput, record_features

    out = {}
    for fmt in ("fp16", "packed-v1"):
        stage = StageOutput(folder / fmt, "generate", f"bench-{fmt}")
        stage.begin(overwrite=True)
        for i in range(0, len(records), 256):
            stage.write_shard(i // 256, records[i:i + 256], record_features(K, fmt))
        stage.finish(counts={"records": len(records)}, versions=["distillkit"])
        out[fmt] = folder / fmt
    return out


def bytes_and_error(records: list[dict], folder: Path) -> tuple[dict, dict]:
    import numpy as np

    from distillkit.records import StageRecords, list_shards, soft_label_bytes
    from distillkit.softlabels import kl_topk

    tokens = sum(int(r["completion_tokens"]) for r in records)
    folders = write_both(records, folder)
    sizes = {fmt: round(sum(soft_label_bytes(s) for s in list_shards(f)) / tokens, 2) for fmt, f in folders.items()}
    stored = np.concatenate([np.asarray(r["topk_logprobs"], dtype=np.float16) for r in records])
    decoded = np.concatenate([r["topk_logprobs"] for r in StageRecords(folders["packed-v1"])])
    kl = kl_topk(stored, decoded)
    return ({**sizes, "ratio": round(sizes["packed-v1"] / sizes["fp16"], 3)},
            {"mean": float(f"{kl.mean():.2e}"), "p99": float(f"{np.quantile(kl, 0.99):.2e}")})


def codec_cost(records: list[dict], reps: int) -> dict:
    """ns per token: encoding the records together (the writer) and decoding their Arrow column in one pass."""
    import pyarrow as pa

    from distillkit.softlabels import decode_column, encode_records
    from distillkit.softlabels.codec import soft_labels_type

    tokens = sum(int(r["completion_tokens"]) for r in records)
    encode, decode = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        values = encode_records([(r["topk_ids"], r["topk_logprobs"], r["completion_ids"]) for r in records])
        encode.append(time.perf_counter() - t0)
        column = pa.array(values, type=soft_labels_type())
        completion = pa.array([r["completion_ids"] for r in records], type=pa.list_(pa.int32()))
        t0 = time.perf_counter()
        decode_column(column, completion)
        decode.append(time.perf_counter() - t0)
    return {"encode": round(statistics.median(encode) / tokens * 1e9), "decode": round(statistics.median(decode) / tokens * 1e9)}


def bench_student(work: Path, layers: int, steps: int):
    """The benches' student (SmolLM2-135M cut to its first `layers` layers, built under `work`), its tokenizer, and
    the SFTConfig arguments of a timed run of `steps` steps after one warm-up step."""
    from transformers import AutoTokenizer

    from distillkit.models import resolve_model
    from distillkit.student.build import build_student_init

    student = type("S", (), {"model": resolve_model("builtin:smollm2-135m-instruct"), "keep_layers": f"first:{layers}"})()
    init = build_student_init(student, work / "student_init")["path"]
    common = dict(learning_rate=1e-4, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=steps + 1,
                  bf16=False, use_cpu=True, seed=0, report_to=[], save_strategy="no", logging_steps=1000,
                  gradient_checkpointing=False, include_num_input_tokens_seen="non_padding", disable_tqdm=True,
                  dataloader_num_workers=0, max_length=512, dataset_kwargs={"skip_prepare_dataset": True},
                  remove_unused_columns=False)
    return init, AutoTokenizer.from_pretrained(init), common


def train_ratio(folders: dict[str, Path], steps: int, layers: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from distillkit.config import KDConfig
    from distillkit.records import StageRecords
    from distillkit.train.batches import DistillCollator
    from distillkit.train.data import build_train_dataset
    from distillkit.train.trainer import DistillTrainer

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_train import Timer

    torch.set_flush_denormal(True)
    work = Path(tempfile.mkdtemp(prefix="bench_softlabels_"))
    init, tok, common = bench_student(work, layers, steps)
    tok_s: dict[str, list[float]] = {"fp16": [], "packed-v1": []}
    build_s: dict[str, list[float]] = {"fp16": [], "packed-v1": []}
    for rep, fmt in enumerate(["fp16", "packed-v1", "packed-v1", "fp16"]):  # ABBA: a drifting load cancels
        t0 = time.perf_counter()
        ds, _ = build_train_dataset(StageRecords(folders[fmt]), tok, 512, use_kd=True, packing=True,
                                    cache_dir=work / f"data-{rep}")
        build_s[fmt].append(time.perf_counter() - t0)
        timer = Timer()
        trainer = DistillTrainer(
            model=AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32),
            args=SFTConfig(output_dir=str(work / f"run-{rep}"), **common), train_dataset=ds, processing_class=tok,
            callbacks=[timer], data_collator=DistillCollator(tok.pad_token_id, padding_free=True),
            kd=KDConfig(enabled=True, alpha=0.5, teacher_probs="topk_tail", chunk_size=1024))
        trainer.train()
        tok_s[fmt].append(timer.tokens / timer.seconds)
    mean = {fmt: statistics.mean(v) for fmt, v in tok_s.items()}
    build = {fmt: statistics.mean(v) for fmt, v in build_s.items()}
    return {"tokens_per_s": {fmt: [round(x, 1) for x in v] for fmt, v in tok_s.items()},
            "ratio_packed_vs_fp16": round(mean["packed-v1"] / mean["fp16"], 3),
            "dataset_build_s": {fmt: [round(x, 2) for x in v] for fmt, v in build_s.items()},
            "build_ratio_packed_vs_fp16": round(build["packed-v1"] / build["fp16"], 3),
            "steps_timed": steps, "layers": layers}


def sampled_vs_topk(real_folder: Path, sizes: list[int], folder: Path) -> dict:
    """Bytes per token of sampled labels (N draws) and top-k labels (k = N) on the same real records and positions."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.engines.hf_scorer import TransformersScorer
    from distillkit.models import resolve_model
    from distillkit.records import StageRecords, record_features, soft_label_bytes, write_shard
    from distillkit.score.stage import score_shard

    path = resolve_model("builtin:smollm2-135m-instruct")
    scorer = TransformersScorer(AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval(),
                                AutoTokenizer.from_pretrained(path), seed=0)
    records = list(StageRecords(real_folder))
    out: dict = {}
    for n in sizes:
        row = {}
        for kind, fmt, draws in (("sampled", "sampled-v1", n), ("topk", "packed-v1", 0)):
            features = record_features(n, fmt)
            rows, _ = score_shard(records, scorer, n, "smollm2", features, num_samples=draws)
            tokens = sum(int(r["completion_tokens"]) for r in rows)
            shard = write_shard(folder / f"{kind}-{n}", 0, rows, features)
            row[f"{kind}_bytes_per_token"] = round(soft_label_bytes(shard) / tokens, 2)
            if kind == "sampled":
                counts = np.concatenate([np.isfinite(r["topk_logprobs"]).sum(1) for r in rows])
                own = np.concatenate([(r["topk_ids"] == np.asarray(r["completion_ids"])[:, None]).any(1)
                                      & np.isfinite(r["topk_logprobs"]).any(1) for r in rows])
                row["mean_distinct_ids"] = round(float(counts.mean()), 2)
                row["share_own_token_drawn"] = round(float(own.mean()), 3)
        row["ratio_sampled_vs_topk"] = round(row["sampled_bytes_per_token"] / row["topk_bytes_per_token"], 3)
        out[f"N={n}"] = row
    out["tokens"] = tokens
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", help="a stage folder with top-20 SmolLM2 soft labels (default: generate one)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts to generate without --real")
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per training run")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-train", action="store_true", help="skip the trainer comparison")
    ap.add_argument("--sampled", help="comma-separated draws per position N: sampled vs top-k (k = N) bytes per token")
    args = ap.parse_args()

    from distillkit.records import StageRecords

    work = Path(tempfile.mkdtemp(prefix="bench_softlabels_"))
    real_folder = Path(args.real) if args.real else generate_real(work / "gen", args.prompts)
    real = list(StageRecords(real_folder))
    synthetic = synthetic_records()
    report: dict = {"real": {"folder": str(real_folder), "records": len(real),
                             "tokens": sum(int(r["completion_tokens"]) for r in real)}}
    report["bytes_per_token"], report["kl"] = {}, {}
    for name, records in (("smollm2_49152", real), ("synthetic_152064", synthetic)):
        report["bytes_per_token"][name], report["kl"][name] = bytes_and_error(records, work / name)
    report["ns_per_token"] = codec_cost(synthetic, args.reps)
    if args.sampled:
        report["sampled"] = sampled_vs_topk(real_folder, [int(x) for x in args.sampled.split(",")], work / "sampled")
    if not args.no_train:
        report["train"] = train_ratio({"fp16": work / "smollm2_49152" / "fp16",
                                       "packed-v1": work / "smollm2_49152" / "packed-v1"}, args.steps, args.layers)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
