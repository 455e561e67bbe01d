"""Which decoder layers a depth-pruned student keeps: `train.student.keep_layers: auto:N`.

A student made by dropping layers from a model keeps whatever those layers did. Which ones go
matters more than how many: on the quickstart, dropping layers 10-15 of SmolLM2 left the text fluent
and the arithmetic gone (the student then learned little), while dropping 3-6 and 26-27 kept it
(BENCHMARKS.md, Quickstart). A whole-text likelihood does not see the difference; the *answer tokens*
of kept traces do: the gold answer as the trace states it (after "=", inside \\boxed{}, or after
"is"), teacher-forced.

`choose_layers` drops layers greedily: each round it removes the layer whose absence raises the
answer tokens' negative log-likelihood least, until N remain. The first and the last layer always
stay (the first reads the embeddings, the last writes what the final norm and head were trained on).
A round runs the model once per candidate on up to `max_traces` traces, with the layer list swapped
in place (nothing copied).

It measures the pruned model before training, which is not what the student becomes after it: on
the quickstart auto:24 trained to 19.2% held out, against 4.2% for first:24 and 40.0% for the
hand-picked cut, although its own cut scored the lower answer NLL (BENCHMARKS.md, Quickstart).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterable

from distillkit.errors import DistillkitError, require

log = logging.getLogger(__name__)

ANSWER_PATTERNS = (r"=\s*({})\b", r"\\boxed\{{({})\}}", r"is ({})\b")


def answer_positions(tokenizer, completion: str, gold: str) -> tuple[list[int], list[int]] | None:
    """The completion's token ids and the indices of the tokens that spell the gold answer, or None."""
    if not gold:
        return None
    for pattern in ANSWER_PATTERNS:
        m = re.search(pattern.format(re.escape(gold)), completion)
        if m:
            enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
            spans = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < m.end(1) and b > m.start(1)]
            return enc["input_ids"], spans
    return None


def answer_traces(tokenizer, records: Iterable[dict[str, Any]], max_traces: int = 16):
    """Up to `max_traces` (prompt ids, completion ids, answer token indices) from kept records."""
    out = []
    for rec in records:
        found = answer_positions(tokenizer, rec.get("completion") or "", str(rec.get("gold_answer") or ""))
        if not found:
            continue
        prompt = tokenizer.apply_chat_template(list(rec["messages"]), add_generation_prompt=True, tokenize=False)
        prompt += rec.get("prefill") or ""
        out.append((tokenizer(prompt, add_special_tokens=False)["input_ids"], *found))
        if len(out) == max_traces:
            break
    return out


class AnswerBatch:
    """Traces as one padded batch, with the (row, column) of every answer token."""

    def __init__(self, traces, device):
        torch = require("torch", "train")
        width = max(len(p) + len(c) for p, c, _ in traces)
        self.ids = torch.zeros((len(traces), width), dtype=torch.long)
        self.mask = torch.zeros_like(self.ids)
        rows, cols = [], []
        for i, (p, c, spans) in enumerate(traces):
            self.ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            self.mask[i, :len(p) + len(c)] = 1
            rows += [i] * len(spans)
            cols += [len(p) + j for j in spans]
        self.rows, self.cols = torch.tensor(rows), torch.tensor(cols)
        self.ids, self.mask = self.ids.to(device), self.mask.to(device)


def answer_nll(model, batch: AnswerBatch, keep: list[int]) -> float:
    """Mean NLL of the answer tokens with only decoder layers `keep` (swapped in place, then restored)."""
    torch = require("torch", "train")
    backbone = getattr(model, model.base_model_prefix)
    config = model.config
    layers, n, types = backbone.layers, config.num_hidden_layers, getattr(config, "layer_types", None)
    backbone.layers = torch.nn.ModuleList([layers[i] for i in keep])
    config.num_hidden_layers = len(keep)
    if types:
        config.layer_types = [types[i] for i in keep]
    try:
        with torch.no_grad():
            logits = model(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False).logits
        targets = batch.ids[batch.rows, batch.cols]
        logp = logits[batch.rows, batch.cols - 1].float().log_softmax(-1)
        return float(-logp.gather(-1, targets[:, None]).mean())
    finally:
        backbone.layers, config.num_hidden_layers = layers, n
        if types:
            config.layer_types = types


def choose_layers(model, tokenizer, records, num_keep: int, max_traces: int = 16) -> tuple[list[int], list[dict]]:
    """Greedy answer-token choice of `num_keep` layers (see the module docstring).

    Returns (kept layer indices, one row per round: the layer dropped and the answer NLL after).
    """
    torch = require("torch", "train")
    n = model.config.num_hidden_layers
    if not 2 <= num_keep <= n:
        raise DistillkitError(f"train.student.keep_layers=auto:{num_keep}: keep between 2 and {n} layers "
                              "(the first and the last always stay)")
    traces = answer_traces(tokenizer, records, max_traces)
    if not traces:
        raise DistillkitError("train.student.keep_layers=auto:N measures the layers on kept traces that state "
                              "their gold answer, and none of these records does; list the layers to keep instead")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    was = next(model.parameters()).device
    model.to(device).eval()
    batch = AnswerBatch(traces, device)
    keep = list(range(n))
    rounds = [{"dropped": None, "answer_nll": round(answer_nll(model, batch, keep), 4)}]
    try:
        while len(keep) > num_keep:
            scores = {c: answer_nll(model, batch, [i for i in keep if i != c]) for c in keep[1:-1]}
            drop = min(scores, key=scores.get)
            keep.remove(drop)
            rounds.append({"dropped": drop, "answer_nll": round(scores[drop], 4)})
            log.info("keep_layers auto: dropped layer %d (answer NLL %.3f), %d left", drop, scores[drop], len(keep))
    finally:
        model.to(was)
    return keep, rounds
