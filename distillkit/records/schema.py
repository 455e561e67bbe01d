"""A trace record's fields (`datasets` features, defaults) and how a completion splits into reasoning and answer."""

from __future__ import annotations

import json
from typing import Any


SOFT_LABEL_COLUMNS = ("topk_ids", "topk_logprobs", "soft_labels", "sampled_labels")
"""Columns that hold soft labels, in any format (`soft_labels` is packed-v1's, `sampled_labels` sampled-v1's)."""
SOFT_LABEL_FORMATS = ("packed-v1", "fp16", "sampled-v1")


def record_features(topk: int = 0, soft_labels: str = "fp16"):
    """`datasets.Features` of a trace record; with `topk` > 0, soft-label columns: `topk_ids`/`topk_logprobs` of fixed
    width `topk` (soft_labels="fp16"), or the `soft_labels` struct (soft_labels="packed-v1", which `write_shard`
    fills from rows that carry `topk_ids`/`topk_logprobs`), or the `sampled_labels` struct (soft_labels="sampled-v1",
    `topk` the draws per position N; filled from rows carrying (T, N) `topk_ids`/`topk_logprobs` and `token_logprobs`)."""
    from datasets import Features, List, Value

    features = {
        "id": Value("string"),
        "prompt_id": Value("string"),
        "sample_index": Value("int32"),
        "source": Value("string"),
        "problem": Value("string"),
        "gold_answer": Value("string"),
        "tests": Value("string"),
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "teacher": Value("string"),
        "sampling": Value("string"),
        "prefill": Value("string"),
        "completion": Value("string"),
        "completion_ids": List(Value("int32")),
        "reasoning": Value("string"),
        "response": Value("string"),
        "reasoning_closed": Value("bool"),
        "prompt_tokens": Value("int32"),
        "completion_tokens": Value("int32"),
        "finish_reason": Value("string"),
        "verdicts": List({"verifier": Value("string"), "passed": Value("bool"), "reason": Value("string")}),
        "meta": Value("string"),
    }
    if topk > 0 and soft_labels == "packed-v1":
        from distillkit.softlabels.codec import soft_labels_feature

        features["soft_labels"] = soft_labels_feature()
    elif topk > 0 and soft_labels == "sampled-v1":
        from distillkit.softlabels.sampled import sampled_labels_feature

        features["sampled_labels"] = sampled_labels_feature()
    elif topk > 0:
        if soft_labels != "fp16":
            raise ValueError(f"soft_labels={soft_labels!r} is unknown; choose one of {list(SOFT_LABEL_FORMATS)}")
        # Fixed-size inner lists: Arrow stores them as one flat buffer, no per-token offsets.
        features["topk_ids"] = List(List(Value("int32"), length=topk))
        features["topk_logprobs"] = List(List(Value("float16"), length=topk))
    return Features(features)


RECORD_DEFAULTS: dict[str, Any] = {
    "source": "",
    "gold_answer": None,
    "tests": None,
    "messages": [],
    "teacher": "",
    "sampling": "{}",
    "prefill": "",
    "completion": "",
    "completion_ids": [],
    "reasoning": None,
    "response": None,
    "reasoning_closed": False,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "finish_reason": "stop",
    "verdicts": [],
    "meta": "{}",
}


def make_record(**fields: Any) -> dict[str, Any]:
    """A record dict with defaults filled in; `id` defaults to "<prompt_id>#<sample_index>"."""
    rec = {**RECORD_DEFAULTS, **fields}
    rec.setdefault("sample_index", 0)
    if "prompt_id" not in rec or "problem" not in rec:
        raise ValueError("a record needs at least `prompt_id` and `problem`")
    rec.setdefault("id", f"{rec['prompt_id']}#{rec['sample_index']}")
    return rec


def teacher_name(record: dict[str, Any]) -> str:
    """Which teacher wrote a record: its name under `generate.teachers` (kept in `meta` as "teacher_name"), else
    the `teacher` column (the model; one-teacher runs and older records)."""
    meta = record.get("meta") or "{}"
    try:
        name = json.loads(meta).get("teacher_name") if isinstance(meta, str) else meta.get("teacher_name")
    except (ValueError, AttributeError):
        name = None
    return name or record.get("teacher") or ""


def split_reasoning(text: str, prefill: str = "", open_tag: str = "<think>", close_tag: str = "</think>"):
    """Split `prefill + text` into (reasoning, response, closed).

    R1 templates pre-fill "<think>\\n", so completions usually lack the opening tag: the prefill is
    put back before splitting. Without any opening tag the text before `</think>` is the reasoning.
    """
    full = prefill + text
    if close_tag not in full:
        start = full.find(open_tag)
        reasoning = full[start + len(open_tag):] if start >= 0 else None
        return (reasoning.strip() if reasoning is not None else None), None, False
    head, _, tail = full.partition(close_tag)
    start = head.find(open_tag)
    reasoning = head[start + len(open_tag):] if start >= 0 else head
    return reasoning.strip(), tail.strip(), True
