"""Trainer throughput vs a plain TRL SFTTrainer script, and what packing leaves unfilled.

Run:  .venv/bin/python bench/bench_train.py [--steps 12] [--layers 8]

Same student (SmolLM2-135M-Instruct with its first `--layers` layers), same synthetic arithmetic
traces, same hyperparameters (batch 4 x 512-token packed rows, AdamW, lr 1e-4, fp32 with flush-denormal
(both sides; bf16 autocast is ~12x slower on an AVX2 CPU, 2x faster with AVX512-BF16: see `resolve_bf16`), no gradient checkpointing). Three runs, each for `--steps` optimizer steps after one warm-up step:

    trl_sft        a plain TRL script: SFTTrainer on {"messages"} with assistant_only_loss, packing (BFD),
                   padding-free (TRL's own defaults for packing)
    distill_sft    distillkit's DistillTrainer, KD off (TRL's fused CE path, our tokenization/packing)
    distill_kd     distillkit's DistillTrainer with the chunked top-k KD term (alpha 0.5, top-k 8, tail)

Prints tokens/s of each (input tokens the model saw / train wall time) and the ratios against
trl_sft (run first and last, averaged), plus the padding figures: pad tokens fed to the model with padding-free packing, the fill of
the packed rows, and the padding an unpacked padded batch of the same data would carry.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_records(tok, num: int, topk: int, seed: int = 0):
    """Arithmetic traces of varied length with fake top-k soft labels (random ids, a peaked distribution)."""
    from distillkit.records import make_record

    rng = random.Random(seed)
    rows = []
    for i in range(num):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        steps = " ".join(f"Step {s}: {a} + {b} is {a + b}, so we carry on checking the sum." for s in
                         range(rng.randint(1, 12)))
        completion = f"We add {a} and {b}. {steps}\n</think>\nThe answer is \\boxed{{{a + b}}}."
        ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        topk_ids = [[t] + [rng.randrange(len(tok)) for _ in range(topk - 1)] for t in ids]
        topk_lp = [[-0.1] + [-4.0 - j for j in range(topk - 1)] for _ in ids]
        rows.append(make_record(prompt_id=f"p{i}", problem="", messages=[
            {"role": "user", "content": f"What is {a} plus {b}? Put the final answer within \\boxed{{}}."}],
            prefill="<think>\n", completion=completion, completion_ids=ids, topk_ids=topk_ids,
            topk_logprobs=topk_lp, finish_reason="stop"))
    return rows


class Timer:
    """A TrainerCallback that times steps after the first (warm-up) one."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _T(TrainerCallback):
            def __init__(self):
                self.t0 = None
                self.tokens0 = 0
                self.seconds = 0.0
                self.tokens = 0

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 1:
                    self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

            def on_train_end(self, args, state, control, **kw):
                self.seconds = time.perf_counter() - self.t0
                self.tokens = state.num_input_tokens_seen - self.tokens0
        return _T()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--records", type=int, default=160)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distillkit.config import KDConfig
    from distillkit.models import resolve_model
    from distillkit.student.build import build_student_init
    from distillkit.train.batches import DistillCollator
    from distillkit.train.data import build_train_dataset, record_to_messages
    from distillkit.train.trainer import DistillTrainer

    torch.set_flush_denormal(True)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    student = type("S", (), {"model": resolve_model("builtin:smollm2-135m-instruct"),
                             "keep_layers": f"first:{args.layers}"})()
    init = build_student_init(student, work / "student_init")["path"]
    tok = AutoTokenizer.from_pretrained(init)
    records = make_records(tok, args.records, topk=8)
    max_length, batch = 512, 4
    common = dict(learning_rate=1e-4, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                  max_steps=args.steps + 1, bf16=False, use_cpu=True, seed=0, report_to=[], save_strategy="no",
                  logging_steps=1000, gradient_checkpointing=False, include_num_input_tokens_seen="non_padding",
                  disable_tqdm=True, dataloader_num_workers=0, max_length=max_length)

    def load():
        return AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)

    results = {}
    trl_ds = Dataset.from_list([{"messages": record_to_messages(r)} for r in records])

    def run_trl():
        """1. the plain TRL script."""
        timer = Timer()
        trainer = SFTTrainer(model=load(), args=SFTConfig(output_dir=str(work / "trl"), assistant_only_loss=True,
                                                          packing=True, **common),
                             train_dataset=trl_ds, processing_class=tok, callbacks=[timer])
        trainer.train()
        return timer.tokens / timer.seconds

    # The baseline runs first and last; its mean is the reference, so load drifting on a shared
    # machine during the bench biases neither side.
    first_trl = run_trl()

    # 2-3. distillkit's trainer, KD off and on
    for name, kd_on in (("distill_sft", False), ("distill_kd", True)):
        ds, info = build_train_dataset(Dataset.from_list(records), tok, max_length, use_kd=kd_on, packing=True)
        timer = Timer()
        trainer = DistillTrainer(
            model=load(), args=SFTConfig(output_dir=str(work / name), dataset_kwargs={"skip_prepare_dataset": True},
                                         remove_unused_columns=False, **common),
            train_dataset=ds, processing_class=tok, callbacks=[timer],
            data_collator=DistillCollator(tok.pad_token_id, padding_free=True),
            kd=KDConfig(enabled=kd_on, alpha=0.5, teacher_probs="topk_tail", chunk_size=1024))
        trainer.train()
        results[name] = timer.tokens / timer.seconds
        packed_info = info

    last_trl = run_trl()
    results["trl_sft"] = (first_trl + last_trl) / 2
    results = {"trl_sft": results.pop("trl_sft"), **results}

    # Padding: padding-free packed batches vs padded unpacked batches of the same examples.
    unpacked, _ = build_train_dataset(Dataset.from_list(records), tok, max_length, use_kd=False, packing=False)
    lengths = [len(x) for x in unpacked["input_ids"]]
    rng = random.Random(0)
    rng.shuffle(lengths)
    padded_slots = sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    report = {
        "tokens_per_s": {k: round(v, 1) for k, v in results.items()},
        "trl_sft_first_last": [round(first_trl, 1), round(last_trl, 1)],
        "ratio_vs_trl_sft": {k: round(v / results["trl_sft"], 3) for k, v in results.items()},
        "padding_free_pad_fraction": 0.0,  # the collator concatenates rows; asserted in tests/train/test_data.py
        "packed_row_fill": round(packed_info["packed_row_fill"], 4),
        "unpacked_padded_waste": round(1 - sum(lengths) / padded_slots, 4),
        "num_tokens": packed_info["num_tokens"], "num_packed_rows": packed_info["num_packed_rows"],
        "steps_timed": args.steps, "layers": args.layers,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
