"""Which decoder layers a pruned student can lose: the measurement behind the quickstart's `keep_layers`
(and behind `keep_layers: auto:N`, distillkit/student/layers.py, which drops layers greedily by it).

For kept traces of a run (its filter folder), teacher-forced on the teacher model, it reports the
negative log-likelihood and top-1 accuracy of the *answer* tokens (the gold number where the trace
states it: after "=", inside \\boxed{}, or after "is") for the full model, without each single layer,
and for given cuts. Answer tokens, not the whole completion: a cut can keep the wording fluent and
still lose the arithmetic (dropping layers 10-15 of SmolLM2 does exactly that).

    .venv/bin/python bench/layer_scan.py RUN/filter [--traces 16] [--drop 3,4,5,6,26,27 ...]
"""

from __future__ import annotations

import argparse
import copy
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("filter_dir")
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--traces", type=int, default=16)
    ap.add_argument("--drop", action="append", default=[], help="comma-separated layers to drop together")
    args = ap.parse_args()

    import torch
    import transformers

    from distillkit.models import resolve_model
    from distillkit.records import read_records
    from distillkit.student.build import prune_layers
    from distillkit.student.layers import AnswerBatch, answer_traces

    torch.set_grad_enabled(False)
    path = resolve_model(args.model)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    full = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch = AnswerBatch(answer_traces(tok, read_records(args.filter_dir).to_list(), args.traces), "cpu")
    targets = batch.ids[batch.rows, batch.cols]
    n = full.config.num_hidden_layers

    def score(drop: list[int]) -> dict[str, float]:
        keep = [i for i in range(n) if i not in drop]
        model = prune_layers(copy.deepcopy(full), keep) if drop else full
        logp = model(input_ids=batch.ids, attention_mask=batch.mask).logits[batch.rows, batch.cols - 1].log_softmax(-1)
        nll = float(-logp.gather(-1, targets[:, None]).mean())
        top1 = float((logp.argmax(-1) == targets).float().mean())
        return {"layers": len(keep), "answer_nll": round(nll, 3), "answer_top1": round(top1, 3)}

    report = {"traces": int(batch.ids.shape[0]), "full": score([])}
    report["without_one"] = {layer: score([layer]) for layer in range(1, n - 1)}
    for spec in args.drop:
        report[f"drop {spec}"] = score([int(x) for x in spec.split(",")])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
