"""The R1 evaluation protocol on top of lm-eval: sampling settings, k samples per question for any
task, and pass@1 with its standard error computed from lm-eval's logged samples.

R1 (DeepSeek-AI, 2025) samples k responses per question at temperature 0.6 / top-p 0.95 and reports
pass@1 = mean over questions of (correct samples / k). The standard error here treats questions as
the sampled units: se = std(per-question pass rates, ddof=1) / sqrt(n). That is also what lm-eval's
`mean` aggregation reports for a per-question metric, which the tests cross-check.
"""

from __future__ import annotations

import logging
from collections import Counter
from statistics import fmean
from typing import Any

from distillkit.schemas.evaluate import TaskScore, mean_and_stderr

log = logging.getLogger(__name__)


def r1_gen_kwargs(temperature: float, top_p: float, max_gen_toks: int) -> dict[str, Any]:
    """Generation kwargs merged into every generative task (stop sequences stay the task's own)."""
    return {"do_sample": temperature > 0, "temperature": temperature, "top_p": top_p,
            "max_gen_toks": max_gen_toks}


def _num_samples(sample: dict) -> int:
    filtered = sample.get("filtered_resps") or [[]]
    first = filtered[0]
    return len(first) if isinstance(first, list) else 1


def summarize_samples(task: str, samples: list[dict], metric: str, filter_name: str | None = None) -> TaskScore:
    """pass@1, its standard error and pass@k from lm-eval's logged samples of one task.

    Each logged sample is one question under one filter, carrying the task's per-question metric
    (the pass rate over its k samples: distillkit's own tasks compute it, `sample_each` makes
    built-in tasks do so) and `filtered_resps` holding the k scored responses.
    """
    filters = list(dict.fromkeys(s["filter"] for s in samples))
    if filter_name is None:
        if not filters:
            raise ValueError(f"{task}: no logged samples")
        filter_name = filters[0]
    rows = [s for s in samples if s["filter"] == filter_name]
    if not rows:
        raise ValueError(f"{task}: no logged samples for filter {filter_name!r} (have {filters})")
    missing = [s["doc_id"] for s in rows if metric not in s]
    if missing:
        raise ValueError(f"{task}: metric {metric!r} missing from logged samples (doc ids {missing[:5]})")
    per_question = {str(s["doc_id"]): float(s[metric]) for s in rows}
    values = list(per_question.values())
    k = max(_num_samples(s) for s in rows)
    pass1, se = mean_and_stderr(values)
    # A per-question pass rate is a multiple of 1/k exactly when the metric is binary per sample.
    binary = all(abs(v * k - round(v * k)) < 1e-6 and 0 <= v <= 1 for v in values)
    pass_k = fmean(1.0 if v > 0 else 0.0 for v in values) if binary else None
    return TaskScore(task=task, metric=metric, filter=filter_name, num_questions=len(values), num_samples=k,
                     pass_at_1=pass1, stderr=se, pass_at_k=pass_k, per_question=per_question)


def constant_answer_baseline(samples: list[dict]) -> dict[str, Any] | None:
    """The score of always giving the most common gold answer of these questions (chosen in hindsight).

    A floor to read model scores against: on a small answer space (arithmetic, multiple choice) a
    model that has learned only the answer format can look competent. None when targets are not
    single strings/numbers (e.g. code tests) or there are no samples.
    """
    targets: dict[str, str] = {}
    for s in samples:
        target = s.get("target")
        if isinstance(target, list) and len(target) == 1:
            target = target[0]
        if not isinstance(target, (str, int, float)) or isinstance(target, bool):
            return None
        targets[str(s["doc_id"])] = str(target).strip()
    if not targets:
        return None
    answer, hits = Counter(targets.values()).most_common(1)[0]
    return {"answer": answer, "pass_at_1": hits / len(targets), "num_questions": len(targets)}


# ------------------------------------------------------------------------ k samples for any task


class _PerSampleFilter:
    """Runs a task's own filter pipeline on each of the k responses separately.

    Built-in tasks (aime24, gsm8k, ...) are written for one response per question: their filters
    end in `take_first` and their `process_results` reads `results[0]` only. Applying the pipeline
    once per sample keeps their extraction exactly as written and yields k filtered responses.
    """

    def __init__(self, ensemble, k: int):
        self.ensemble = ensemble
        self.name = ensemble.name
        self.k = k

    def apply(self, instances) -> None:
        originals = [inst.resps for inst in instances]
        per_sample: list[list] = [[] for _ in instances]
        try:
            for i in range(self.k):
                for inst, resps in zip(instances, originals):
                    inst.resps = [resps[i]]
                self.ensemble.apply(instances)
                for out, inst in zip(per_sample, instances):
                    out.append(inst.filtered_resps[self.name])
        finally:
            for inst, resps in zip(instances, originals):
                inst.resps = resps
        for inst, out in zip(instances, per_sample):
            inst.filtered_resps[self.name] = out


def sample_each(task, k: int) -> bool:
    """Make an lm-eval task draw k samples per question and score each with the task's own code.

    Its per-question metrics become means over the k samples (pass@1 for a 0/1 metric). Applies to
    generative tasks whose metrics all aggregate by `mean` and that do not already draw several
    samples (self-consistency tasks vote over theirs); returns False, changing nothing, otherwise.
    """
    from lm_eval.api.metrics import mean as lm_mean

    name = task.config.task
    if task.get_config("output_type") != "generate_until":
        log.info("%s is not generative; evaluated as lm-eval defines it", name)
        return False
    if (task.get_config("repeats") or 1) > 1:
        log.warning("%s already draws %s samples per question (it aggregates them itself); k=%d not applied",
                    name, task.get_config("repeats"), k)
        return False
    aggregations = task.aggregation()
    if any(fn is not lm_mean for fn in aggregations.values()):
        log.warning("%s has metrics not averaged per question (%s); k=%d samples not applied",
                    name, sorted(aggregations), k)
        return False
    task.set_config("repeats", k)
    task._filters = [_PerSampleFilter(f, k) for f in task._filters]
    original = task.process_results

    def process_results(doc, results):
        # results == [[filtered response of sample 1, ..., of sample k]] (one request per question)
        per_sample = [original(doc, [r]) for r in results[0]]
        return {m: fmean(float(p[m]) for p in per_sample) for m in per_sample[0]}

    task.process_results = process_results
    return True


def primary_metric(task) -> str:
    """The metric reported as pass@1: the task's first metric (pass@1 for distillkit's tasks)."""
    names = list(task.aggregation())
    return "pass@1" if "pass@1" in names else names[0]


def uses_samples_natively(task) -> bool:
    """distillkit's own tasks keep all `repeats` responses and score them together."""
    process = task.config.process_results
    return getattr(process, "__name__", "") == "process_math_samples"


# ------------------------------------------------------------------ tasks and R1-style answers


def reads_reasoning(task) -> bool:
    """Whether a task scores the whole response itself, `<think>...</think>` included (distillkit's R1 tasks,
    `metadata: {reads_reasoning: true}`). lm-eval must then hand it the raw text: its `think_end_token`
    cuts the reasoning off, and a response that never closed it would be scored as if it were the answer."""
    return bool((task.config.metadata or {}).get("reads_reasoning"))


def probe_response(target: str, strip_reasoning: bool) -> str:
    """An R1-style response whose final answer is `target`, boxed: what a correct distilled student writes."""
    response = ("<think>\nLet me work this out step by step.\n</think>\n\n"
                f"The final answer is $\\boxed{{{target}}}$.")
    return response.split("</think>")[-1].lstrip() if strip_reasoning else response


def reads_boxed_answers(task, strip_reasoning: bool) -> bool | None:
    """Does the task's reported metric give full marks to an R1-style response boxing the gold answer?

    Probed on the task's first question with its own filter pipeline and process_results, exactly as a
    model's response would be scored. None when it cannot be probed (not generative, no documents, a
    target that is not a single answer, or the task's code raising on the probe).
    """
    from lm_eval.api.instance import Instance

    if task.get_config("output_type") != "generate_until" or not task._filters:
        return None
    try:
        doc = next(iter(task.eval_docs))
        target = task.doc_to_target(doc)
        if isinstance(target, list):
            target = target[0] if len(target) == 1 else None
        if not isinstance(target, (str, int, float)) or isinstance(target, bool):
            return None
        target = str(target).strip()
        if "####" in target:  # gsm8k-style worked solution: the answer follows the marker
            target = target.split("####")[-1].strip()
        inst = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0,
                        metadata=(task.config.task, 0, 1))
        inst.resps = [probe_response(target, strip_reasoning)]
        ensemble = task._filters[0]
        ensemble.apply([inst])
        scores = task.process_results(doc, [inst.filtered_resps[ensemble.name]])
        return float(scores[primary_metric(task)]) >= 1.0
    except Exception as e:  # noqa: BLE001 - a probe: any failure means "cannot tell"
        log.debug("could not probe %s with a boxed answer: %r", task.config.task, e)
        return None
