"""Agreement of distillkit's R1-task math scoring with lm-eval's and lighteval's scoring of the same responses.

Run:  .venv/bin/python bench/bench_r1_scoring.py [--json PATH] [--lighteval-src DIR[:DIR...]]

Corpus: bench/data/r1_scoring_corpus.json, R1-style responses (`<think>` reasoning `</think>` answer section) to
MATH-500 questions (gold `answer` and `solution` columns of HuggingFaceH4/MATH-500), AIME 2024 answers, and the
(prediction, gold) cases of lighteval's and Math-Verify's own tests wrapped as R1 responses. Each response carries a
hand verdict under R1's protocol (`r1`: the answer is the text after `</think>`, its final `\\boxed{}` must be
mathematically equivalent to the gold answer).

Scorers, each given the same raw response text:

- `distillkit`: `judge_math(response, answer)` of distillkit/evaluate/tasks/r1/utils.py, what the r1_math500 /
  r1_aime24 / r1_aime25 tasks report (loaded with importlib: the task folder is not a package).
- `lm-eval </think>` / `lm-eval raw`: lm-eval 0.4 minerva_math `process_results` (lm_eval/tasks/minerva_math/utils.py)
  and its `math_verify` metric: `verify(gold=parse(doc["solution"]), target=parse(text))`, that line with the gold's
  parse cached (`Scorers.lmeval_process_results` calls process_results itself; both give one verdict). `text` is
  what lm-eval hands to process_results: with the model arg `think_end_token=</think>`,
  `postprocess_generated_text` (lm_eval/models/utils.py, called as is) keeps `generation.split("</think>")[-1]
  .lstrip()` (a response without `</think>` stays whole); without it, the raw response. For AIME the `solution`
  is `\\boxed{answer}` (math-ai/aime24's solution column); lm-eval's own aime tasks use a string match instead.
- `lighteval`: lighteval 0.13.0 `math_500` / `aime24` / `aime25` (lighteval/tasks/tasks/math_500.py, aime.py), metric
  `Metrics.pass_at_k_math` (lighteval/metrics/metrics.py): `PassAtK(strip_strings=True)` over
  `MultilingualExtractiveMatchMetric(gold_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()],
  pred_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()], precision=6)` with the class defaults
  `fallback_mode="first_match"`, `extraction_mode="any_match"` (lighteval/metrics/dynamic_metrics.py). Gold text:
  `"ANSWER: " + solution` for math_500 (`math_500_prompt`), `answer` for AIME (`aime_prompt`). The pipeline's default
  `remove_reasoning_tags=True` first deletes every `<think>...</think>` pair (lighteval/utils/utils.py
  `remove_reasoning_tags`: only a pair is removed, so a completion without the opening tag keeps its reasoning).
- `lighteval raw`: the same metric on the raw response: what `--remove-reasoning-tags false` scores, and what
  0.13.0's `avg@n` metric of aime24/aime25 scores in any case (`ModelResponse.__getitem__` in
  lighteval/models/model_output.py drops `text_post_processed`, so `AvgAtN` reads the unstripped text; fixed
  upstream after 0.13.0, see lighteval tests/unit/metrics/test_avg_at_n_final_text.py).
- `open-r1`: open-r1's custom tasks (huggingface/open-r1 src/open_r1/evaluate.py, run with
  `lighteval vllm ... "custom|math_500|0|0" --custom-tasks src/open_r1/evaluate.py`): `latex_gold_metric` for
  math_500 (gold `solution`, `gold_extraction_target=(LatexExtractionConfig(),)`) and `expr_gold_metric` for AIME
  (gold `answer`, `(ExprExtractionConfig(),)`), both with `pred_extraction_target=(ExprExtractionConfig(),
  LatexExtractionConfig(boxed_match_priority=0))`, `fallback_mode="first_match"`, `precision=5`; scored on the
  reasoning-stripped text, as lighteval 0.13.0's pipeline does by default.

The lighteval and open-r1 verdicts are reproduced with math-verify (`parse` / `verify`), which is lighteval's
extraction code split out into a library: same extraction configs (LaTeX before expressions at equal priority, as
lighteval's `get_extraction_regexes` sorts them; lighteval's LaTeX normalisation: basic_latex, units,
malformed_operators, nits, boxed="all"), same fallback and extraction modes, same gold fallback (an unparsable gold is
compared as its raw string), same precision. `--lighteval-src` instead runs lighteval 0.13.0's own code in a
subprocess whose PYTHONPATH is the given folders, which must hold the unpacked wheels of lighteval 0.13.0 and of the
versions it pins, latex2sympy2_extended 1.0.6 and antlr4-python3-runtime 4.13.2 (they shadow this virtualenv's
newer copies there; nothing is installed into it), and reports how far the reproduction agrees with it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from distillkit.testing import load_file_module

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "bench" / "data" / "r1_scoring_corpus.json"
R1_UTILS = ROOT / "distillkit" / "evaluate" / "tasks" / "r1" / "utils.py"

SCORERS = ("distillkit", "lm-eval </think>", "lm-eval raw", "lighteval", "lighteval raw", "open-r1")
REASONING_TAGS = [("<think>", "</think>")]  # lighteval's default `reasoning_tags`


def load_corpus(path: Path = CORPUS) -> tuple[dict, list[dict]]:
    data = json.loads(Path(path).read_text())
    return data["golds"], data["responses"]


# ------------------------------------------------------------------------------------------- scorers


def remove_reasoning_tags(text: str, tag_pairs=REASONING_TAGS) -> str:
    """lighteval 0.13.0 lighteval/utils/utils.py `remove_reasoning_tags`, verbatim logic."""
    result = text
    for start_tag, end_tag in tag_pairs:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start != -1 and end != -1:
                result = result[:start] + result[end + len(end_tag):]
            else:
                break
    return result


class Scorers:
    """The six scorers; each `name(response, gold_entry) -> bool`."""

    def __init__(self):
        self.r1 = load_file_module(R1_UTILS, "r1_task_utils")
        import lm_eval
        from lm_eval.models.utils import postprocess_generated_text

        self.postprocess = postprocess_generated_text
        self.minerva = load_file_module(Path(lm_eval.__file__).parent / "tasks" / "minerva_math" / "utils.py",
                                        "minerva_math_utils")
        from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

        self.parse, self.verify = parse, verify
        # lighteval's latex_normalization_config_default_factory; its `equations=True` is done by math-verify's
        # parser itself now (latex2sympy2_extended warns that the flag is deprecated), so it is left off here.
        norm = NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all",
                                   equations=False)
        latex = LatexExtractionConfig(boxed_match_priority=55, normalization_config=norm)  # lighteval's default
        latex_boxed_first = LatexExtractionConfig(boxed_match_priority=0, normalization_config=norm)
        expr = ExprExtractionConfig()
        # lighteval sorts the targets LaTeX before expressions (a stable sort on priority follows).
        self.lv_math = ([latex, expr], [latex, expr], 6)  # gold targets, pred targets, precision
        self.or1_math500 = ([latex], [latex_boxed_first, expr], 5)
        self.or1_aime = ([expr], [latex_boxed_first, expr], 5)
        self._gold_cache: dict = {}

    # distillkit ------------------------------------------------------------------------------------------
    def distillkit(self, response: str, gold: dict) -> bool:
        return bool(self.r1.judge_math(response, gold["answer"]).passed)

    # lm-eval ---------------------------------------------------------------------------------------------
    def lmeval_text(self, response: str, think_end: bool) -> str:
        return self.postprocess(response, None, "</think>" if think_end else None)

    def lmeval_process_results(self, response: str, gold: dict, think_end: bool) -> dict:
        """lm-eval's own minerva_math process_results on what lm-eval would hand it (slow: also runs exact_match)."""
        m = self.minerva
        solution = gold["solution"]
        boxed = m.last_boxed_only_string(solution)
        doc = {"problem": "", "solution": solution,  # what minerva_math's process_docs builds
               "answer": m.normalize_final_answer(m.remove_boxed(boxed) if boxed else solution)}
        return m.process_results(doc, [self.lmeval_text(response, think_end)])

    def _lmeval(self, response: str, gold: dict, think_end: bool) -> bool:
        # process_results' math_verify line, `verify(gold=parse(doc["solution"]), target=parse(candidates))`, with
        # the gold's parse kept between responses (the exact_match half of process_results is not needed here and
        # costs more than all the rest; tests/evaluate/test_r1_scoring_agreement.py checks both give one verdict).
        solution = gold["solution"]
        key = (solution, "lm-eval")
        if key not in self._gold_cache:
            self._gold_cache[key] = self.parse(solution)
        return bool(self.verify(gold=self._gold_cache[key], target=self.parse(self.lmeval_text(response, think_end))))

    def lmeval_think(self, response: str, gold: dict) -> bool:
        return self._lmeval(response, gold, True)

    def lmeval_raw(self, response: str, gold: dict) -> bool:
        return self._lmeval(response, gold, False)

    # lighteval / open-r1 ---------------------------------------------------------------------------------
    def _extractive_match(self, prediction: str, gold_text: str, cfg) -> bool:
        gold_targets, pred_targets, precision = cfg
        key = (gold_text, id(cfg))
        if key not in self._gold_cache:
            g = self.parse(gold_text, gold_targets, fallback_mode="first_match", extraction_mode="any_match",
                           parsing_timeout=5)
            self._gold_cache[key] = g if g else [gold_text]  # MultilingualExtractiveMatchMetric's gold fallback
        golds = self._gold_cache[key]
        preds = self.parse(prediction, pred_targets, fallback_mode="first_match", extraction_mode="any_match",
                           parsing_timeout=5)
        return bool(preds) and bool(self.verify(golds, preds, float_rounding=precision, timeout_seconds=5))

    @staticmethod
    def lighteval_gold(gold: dict) -> str:
        return ("ANSWER: " + gold["solution"] if gold["task"] == "math500" else gold["answer"]).strip()

    def lighteval(self, response: str, gold: dict) -> bool:
        return self._extractive_match(remove_reasoning_tags(response).strip(), self.lighteval_gold(gold),
                                      self.lv_math)

    def lighteval_raw(self, response: str, gold: dict) -> bool:
        return self._extractive_match(response.strip(), self.lighteval_gold(gold), self.lv_math)

    def open_r1(self, response: str, gold: dict) -> bool:
        if gold["task"] == "math500":
            return self._extractive_match(remove_reasoning_tags(response), gold["solution"], self.or1_math500)
        return self._extractive_match(remove_reasoning_tags(response), gold["answer"], self.or1_aime)

    def all(self) -> dict:
        return {"distillkit": self.distillkit, "lm-eval </think>": self.lmeval_think, "lm-eval raw": self.lmeval_raw,
                "lighteval": self.lighteval, "lighteval raw": self.lighteval_raw, "open-r1": self.open_r1}


def answer_part(response: str) -> str:
    """The text after the first `</think>` (distillkit's split), or the tail of an unclosed response."""
    if "</think>" in response:
        return response.split("</think>", 1)[1].strip()
    return "(no </think>) ..." + response[-80:]


def score(golds: dict, responses: list[dict], names=SCORERS, scorers: Scorers | None = None) -> list[dict]:
    scorers = scorers or Scorers()
    fns = scorers.all()
    rows = []
    for r in responses:
        gold = golds[r["gold"]]
        verdicts = {}
        for name in names:
            try:
                verdicts[name] = fns[name](r["response"], gold)
            except Exception as e:  # a scorer that raises scores 0, as the harnesses do
                verdicts[name] = False
                verdicts[name + " error"] = f"{type(e).__name__}: {e}"
        rows.append({"id": r["id"], "kind": r["kind"], "gold": gold["answer"], "r1": r["r1"], "why": r["why"],
                     "answer_part": answer_part(r["response"]), "verdicts": verdicts})
    return rows


# ------------------------------------------------------------------------------ real lighteval (optional)

_REAL_LIGHTEVAL = r'''
import json, sys, logging
logging.disable(logging.WARNING)
from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
from lighteval.metrics.metrics_sample import AvgAtN, PassAtK
from lighteval.metrics.utils.extractive_match_utils import ExprExtractionConfig, LatexExtractionConfig
from lighteval.models.model_output import ModelResponse
from lighteval.tasks.requests import Doc
from lighteval.utils.language import Language
from lighteval.utils.utils import remove_reasoning_tags
TAGS = [("<think>", "</think>")]
def pass_at_k_math():  # Metrics.pass_at_k_math, sample_params k=1, n=1
    return PassAtK(k=1, n=1, strip_strings=True, sample_scoring_function=MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH, gold_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()],
        pred_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()], precision=6))
def avg_at_n_math():  # Metrics.avg_at_n_math, n=1
    return AvgAtN(n=1, sample_scoring_function=MultilingualExtractiveMatchMetric(
        language=Language.ENGLISH, gold_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()],
        pred_extraction_target=[ExprExtractionConfig(), LatexExtractionConfig()], precision=6))
def open_r1(gold_target):  # open-r1 src/open_r1/evaluate.py latex_gold_metric / expr_gold_metric
    return MultilingualExtractiveMatchMetric(language=Language.ENGLISH, fallback_mode="first_match", precision=5,
        gold_extraction_target=(gold_target,),
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
        aggregation_function=max)
def response(text):  # as Pipeline._post_process_outputs leaves it with remove_reasoning_tags=True
    r = ModelResponse(text=[text])
    r.text_post_processed = [remove_reasoning_tags(text=text, tag_pairs=TAGS)]
    return r
out = []
for item in json.load(sys.stdin):
    text, gold, task = item["response"], item["gold"], item["task"]
    lv_gold = ("ANSWER: " + gold["solution"]) if task == "math500" else gold["answer"]
    doc = lambda g: Doc(query="", choices=[g], gold_index=0)
    v = {}
    try: v["lighteval"] = bool(pass_at_k_math().compute(doc=doc(lv_gold), model_response=response(text)) > 0)
    except Exception as e: v["lighteval"] = False
    try: v["lighteval raw"] = bool(avg_at_n_math().compute(doc=doc(lv_gold), model_response=response(text)) > 0)
    except Exception as e: v["lighteval raw"] = False
    try:
        m = open_r1(LatexExtractionConfig() if task == "math500" else ExprExtractionConfig())
        g = gold["solution"] if task == "math500" else gold["answer"]
        v["open-r1"] = bool(m.compute(doc=doc(g), model_response=response(text)) > 0)
    except Exception as e: v["open-r1"] = False
    out.append(v)
json.dump(out, sys.stdout)
'''


def real_lighteval(golds: dict, responses: list[dict], src: str) -> list[dict]:
    """lighteval 0.13.0's own metrics on the corpus, in a subprocess whose PYTHONPATH is `src` only."""
    items = [{"response": r["response"], "gold": golds[r["gold"]], "task": golds[r["gold"]]["task"]}
             for r in responses]
    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.run([sys.executable, "-c", _REAL_LIGHTEVAL], input=json.dumps(items), capture_output=True,
                          text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"lighteval subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------------- report


def summarize(rows: list[dict], names=SCORERS) -> dict:
    n = len(rows)
    correct = {name: sum(r["verdicts"][name] for r in rows) for name in names}
    vs_r1 = {name: sum(r["verdicts"][name] == r["r1"] for r in rows) for name in names}
    pairs = {f"{a} | {b}": sum(r["verdicts"][a] == r["verdicts"][b] for r in rows)
             for a, b in itertools.combinations(names, 2)}
    errors = {name: sum(name + " error" in r["verdicts"] for r in rows) for name in names}
    return {"n": n, "r1_correct": sum(r["r1"] for r in rows), "correct": correct, "agree_with_r1": vs_r1,
            "pairwise_agree": pairs, "errors": errors}


def disagreements(rows: list[dict], names=SCORERS) -> list[dict]:
    return [r for r in rows if len({r["verdicts"][name] for name in names} | {r["r1"]}) > 1]


def _cell(text: str, width: int = 70) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."


def markdown(rows: list[dict], summary: dict, names=SCORERS, elapsed: float | None = None) -> str:
    n = summary["n"]
    out = [f"R1 math scoring agreement: {n} responses ({summary['r1_correct']} correct under R1's protocol)"
           + (f", scored in {elapsed:.1f} s" if elapsed is not None else ""), ""]
    out += ["| Scorer | Scored correct | Agrees with the R1-protocol verdict |", "|---|---|---|"]
    for name in names:
        a = summary["agree_with_r1"][name]
        out.append(f"| {name} | {summary['correct'][name]} | {a}/{n} ({100 * a / n:.1f}%) |")
    if any(summary["errors"].values()):
        out += ["", "Scorer errors (scored 0): " + ", ".join(f"{k} {v}" for k, v in summary["errors"].items() if v)]
    out += ["", "Pairwise agreement (same verdict on the same response):", "",
            "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append("-")
            else:
                k = summary["pairwise_agree"].get(f"{a} | {b}", summary["pairwise_agree"].get(f"{b} | {a}"))
                cells.append(f"{100 * k / n:.1f}%")
        out.append(f"| {a} | " + " | ".join(cells) + " |")
    kinds = Counter(r["kind"] for r in rows)
    out += ["", "Verdicts that differ from the R1-protocol verdict, by kind of response (n: responses of the kind):",
            "", "| Kind | n | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for kind in sorted(kinds):
        krows = [r for r in rows if r["kind"] == kind]
        cells = [str(sum(r["verdicts"][name] != r["r1"] for r in krows)) for name in names]
        out.append(f"| {kind} | {len(krows)} | " + " | ".join(cells) + " |")
    dis = disagreements(rows, names)
    out += ["", f"Every disagreement ({len(dis)} responses where a scorer or the R1 verdict differs; "
            "1 = scored correct):", "",
            "| id | kind | gold | answer part | R1 | " + " | ".join(names) + " |",
            "|---|---|---|---|---|" + "---|" * len(names)]
    for r in dis:
        out.append(f"| {r['id']} | {r['kind']} | {_cell(r['gold'], 30)} | {_cell(r['answer_part'])} | "
                   f"{int(r['r1'])} | " + " | ".join(str(int(r['verdicts'][name])) for name in names) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write every verdict and the summary here")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--lighteval-src", help="PYTHONPATH holding lighteval 0.13.0 and its pinned latex2sympy2_extended "
                                            "1.0.6 / antlr4 4.13.2: also run lighteval's own metrics and compare")
    args = ap.parse_args(argv)
    # math-verify and the scorers warn per unparsable answer: hundreds of lines here. Only when run as a script:
    # imported by a test, the process's logging is left alone.
    if __name__ == "__main__":
        for name in ("math_verify", "lm_eval", "r1_task_utils", "distillkit"):
            logging.getLogger(name).setLevel(logging.ERROR)
    golds, responses = load_corpus(args.corpus)
    t0 = time.perf_counter()
    rows = score(golds, responses)
    elapsed = time.perf_counter() - t0
    summary = summarize(rows)
    print(markdown(rows, summary, elapsed=elapsed))
    result = {"summary": summary, "rows": rows, "seconds": elapsed}
    if args.lighteval_src:
        t1 = time.perf_counter()
        real = real_lighteval(golds, responses, args.lighteval_src)
        names = ("lighteval", "lighteval raw", "open-r1")
        diff = {name: [r["id"] for r, v in zip(rows, real) if r["verdicts"][name] != v[name]] for name in names}
        print(f"\nlighteval 0.13.0's own code ({time.perf_counter() - t1:.0f} s) vs the math-verify reproduction:")
        for name in names:
            print(f"- {name}: same verdict on {len(rows) - len(diff[name])}/{len(rows)}"
                  + (f"; differs on {', '.join(diff[name])}" if diff[name] else ""))
        for name in names:
            rl = [dict(r, verdicts={**r["verdicts"], name: v[name]}) for r, v in zip(rows, real)]
            a = sum(x["verdicts"][name] == x["r1"] for x in rl)
            print(f"- real {name}: agrees with the R1-protocol verdict on {a}/{len(rows)} ({100 * a / len(rows):.1f}%)")
        result["real_lighteval"] = {"verdicts": real, "differs_from_reproduction": diff}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
