"""Helpers for the train tests: kept records with real soft labels from a tiny teacher, recipes around them."""

from __future__ import annotations

PREFILL = "<think>\n"


def teacher_records(model_dir, num: int = 8, topk: int = 4, seed: int = 0, with_eos: bool = True,
                    max_extra_steps: int = 0) -> list[dict]:
    """Arithmetic traces tokenized by the tiny tokenizer, top-k soft labels from the tiny model's real logits.

    The completions are written, not sampled (a random 2-layer model writes noise); the soft labels are
    the teacher's actual distribution at each completion token, which is what the trainer consumes.
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillkit.records import make_record

    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    for i in range(num):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        messages = [{"role": "user", "content": f"how many is {a} plus {b}? put the final answer within boxed."}]
        steps = "".join(f" check {a} + {b} = {a + b}." for _ in range(rng.randint(0, max_extra_steps)))
        completion = f"first add {a} and {b}. {a} + {b} = {a + b}.{steps}</think> so the answer is \\boxed{{{a + b}}}"
        ids = tok(completion, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if with_eos else [])
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + PREFILL
        pids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([pids + ids])).logits[0, len(pids) - 1:-1].float()
        values, index = logits.log_softmax(-1).topk(topk, dim=-1)
        rows.append(make_record(prompt_id=f"p{i}", problem=messages[0]["content"], messages=messages,
                                prefill=PREFILL, completion=completion, completion_ids=ids, gold_answer=str(a + b),
                                topk_ids=index.tolist(), topk_logprobs=values.tolist(),
                                completion_tokens=len(ids), finish_reason="stop", reasoning_closed=True))
    return rows



def make_recipe(run_dir, records, student: str, topk: int = 4, keep_layers=None, **train):
    """A recipe whose filter output holds `records`, training `student` with `train` overrides."""
    from distillkit.config import validate_recipe
    from distillkit.records import write_shard, record_features

    cfg = validate_recipe({
        "name": "t", "output_dir": str(run_dir), "stages": ["filter", "train"],
        "train": {"student": {"model": str(student), "keep_layers": keep_layers}, "method": "full", "learning_rate": 1e-3,
                  "num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                  "max_length": 128, "packing": False, "gradient_checkpointing": False, "bf16": False,
                  "logging_steps": 1, "save_steps": 1000, **train},
    })
    folder = cfg.stage_dir("filter")
    if not list(folder.glob("shard-*.parquet")):
        write_shard(folder, 0, records, record_features(topk))
    return cfg
