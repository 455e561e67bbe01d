"""`distillkit report RUN_DIR`: one self-contained HTML page of a run (no network, no external assets).

Sections: summary, the teachers (a run with `generate.teachers`: each one's counts, funnel and scores), filter funnel (with its warnings), rejection reasons (passes and "cannot judge" counted
apart), the teacher's pass rate per prompt, length histograms, loss curves (the train manifest's
`loss_curve`), evaluation (pass@1 ± se per model and task, read through `EvalResults`) and a browser over
a sample of kept and rejected traces. Charts are inline SVG (distillkit/publish/charts.py); the browser is
inline JavaScript over embedded JSON. A section whose stage has not run says so.
After rendering, <body data-overflow> says whether the page is wider than the window.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from distillkit.errors import DistillkitError
from distillkit.publish.charts import PALETTE, _empty, _esc, svg_bars, svg_compare, svg_eval, svg_histogram, svg_lines
from distillkit.records import atomic_write_text, iter_records, list_shards, read_manifest
from distillkit.schemas.evaluate import MODEL_LABELS, EvalResults, paired_text
from distillkit.schemas.filter import FilterStats
from distillkit.schemas.train import TrainStats

SECTIONS = ["summary", "funnel", "reasons", "difficulty", "lengths", "training", "evaluation", "samples"]
NBSP_PM = "\u00a0±\u00a0"  # "±" that a table cell does not break around
# keys of the train manifest's loss_curve rows; kl_sampled (sampled labels) sits above the KL by a teacher-set gap
CURVES = {"loss": "total loss", "ce": "CE", "kl": "KL", "kl_sampled": "KL to sampled counts (biased up)"}


# ----------------------------------------------------------------------------------------- data


def _reasons_of(record: dict) -> list[str]:
    return [f"{v['verifier']}:{v['reason']}" for v in record.get("verdicts") or [] if v.get("passed") is False]


def _sample(folder: Path, n: int, verdicts: Counter, seed: int = 0) -> tuple[list[dict], list[int]]:
    """Up to n records (reservoir sample) and the completion lengths of all records; counts every
    verdict (verifier, reason, passed) into `verdicts` on the way."""
    rng = random.Random(seed)
    lengths, chosen = [], []
    if not folder.is_dir() or not list_shards(folder):
        return chosen, lengths
    cols = ["id", "problem", "gold_answer", "completion", "prefill", "completion_tokens", "finish_reason", "verdicts"]
    for i, rec in enumerate(iter_records(folder, columns=cols)):
        lengths.append(rec.get("completion_tokens") or 0)
        verdicts.update((v["verifier"], v["reason"], v.get("passed")) for v in rec.get("verdicts") or [])
        if len(chosen) < n:
            chosen.append(rec)
        elif (j := rng.randint(0, i)) < n:
            chosen[j] = rec
    return chosen, lengths


def _reason_counts(verdicts: Counter, stats: FilterStats, have_rejected: bool) -> dict[Any, list[tuple[str, int]]]:
    """{False: rejections, True: passes, None: cannot judge}: [(step:reason, count)] by count.

    From the filter manifest's `outcomes` (every verdict by outcome). Runs filtered before it existed have
    only `reasons` (passes included, unlabelled): then the records' `verdicts` say which is which, and
    without rejected shards (filter.write_rejected: false) a reason counts as a rejection unless a kept
    record carries it as a pass or "cannot judge"."""
    if stats.outcomes:
        named = {"rejected": False, "passed": True, "cannot_judge": None}
        verdicts = Counter({(step, reason, named[o]): n for step, by in stats.outcomes.items()
                            for o, rs in by.items() for reason, n in rs.items()})
    elif not have_rejected:
        kind = {(s, r): p for s, r, p in verdicts}
        verdicts = Counter({(s, r, kind.get((s, r), False)): n for s, rs in stats.reasons.items() for r, n in rs.items()})
    out: dict[Any, list[tuple[str, int]]] = {False: [], True: [], None: []}
    for (step, reason, passed), n in sorted(verdicts.items(), key=lambda kv: -kv[1]):
        out[passed].append((f"{step}:{reason}", n))
    return out


# ----------------------------------------------------------------------------------------- sections


def _table(header: list[str] | str, rows: list[list[str]]) -> str:
    """An HTML table (cells are already-escaped HTML; header: names, or header rows as HTML) in a box
    that scrolls sideways if it must."""
    head = header if isinstance(header, str) else "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table>{head}{body}</table></div>"


def _reasons_section(counts: dict[Any, list[tuple[str, int]]]) -> str:
    body = svg_bars([(k, n, str(n)) for k, n in counts[False]], color=PALETTE[3]) if counts[False] \
        else _empty("no record was rejected")
    other = [[_esc(k), "passed" if p else "cannot judge", str(n)] for p in (True, None) for k, n in counts[p]]
    if other:
        body += ("<p class='note'>Verdicts that let a record through (not rejections):</p>"
                 + _table(["step:reason", "verdict", "records"], other))
    return body + ("<p class='note'>Every verdict is counted: with several verifiers judging a record, a rejected "
                   "record can count under more than one reason; the funnel counts it once.</p>")


def _training_section(manifest) -> str:
    """Loss curves from the train manifest's `loss_curve` (one row per log: step, loss, ce, kl, ...)."""
    if manifest is None:
        return _empty("train has not run")
    st = TrainStats.of(manifest)
    if st is None:
        return _empty("the train manifest holds no statistics")
    curves: dict[str, list[tuple[float, float]]] = {}
    for point in st.loss_curve:
        for key, name in CURVES.items():
            if getattr(point, key) is not None:
                curves.setdefault(name, []).append((float(point.step), float(getattr(point, key))))
    kd = st.kd or {}
    facts = [f"{st.global_steps} steps", f"{st.tokens_seen:,} tokens seen", f"{st.train_seconds:.0f} s of training",
             f"mean train loss {st.final_train_loss:.4g}"]
    facts += [f"total loss = {kd['alpha']:g}·CE + {1 - kd['alpha']:g}·T²·KL (T = {kd.get('temperature', 1):g})"
              ] if kd.get("alpha") is not None else []
    body = f"<p class='note'>{_esc(', '.join(facts))}</p>"
    if not curves:
        return body + _empty("the train manifest has no loss_curve")
    steps = sorted({x for ps in curves.values() for x, _ in ps})
    value = {(name, x): y for name, ps in curves.items() for x, y in ps}
    rows = [[f"{x:g}"] + [f"{value[(n, x)]:.4g}" if (n, x) in value else "–" for n in curves] for x in steps]
    return (body + svg_lines(curves) + f"<details{' open' if len(steps) <= 12 else ''}><summary>loss values "
            f"({len(steps)} logged steps)</summary>" + _table(["step"] + list(curves), rows) + "</details>")


def _evaluation_section(eval_dir: Path) -> str:
    try:
        results = EvalResults.read(eval_dir)
    except DistillkitError as e:  # a results.json of another shape: say so loudly, keep the rest of the report
        return f"<p class='error'>{_esc(e)}</p>"
    if results is None:
        return _empty("evaluate has not run")
    p, models = results.protocol, results.model_keys()
    body = (f"<p class='note'>pass@1 in % ± standard error over questions; k={p.num_samples} samples per question "
            f"at temperature {p.temperature:g}, top-p {p.top_p:g}, up to {p.max_gen_toks} new tokens "
            f"(backend {_esc(p.backend)}). Whiskers: ±1 se; dashed line: constant-answer baseline.</p>")
    both = "student_before" in models and "student_after" in models
    header = ("<tr><th rowspan='2'>task</th><th rowspan='2'>questions</th>"
              + "".join(f"<th colspan='2'>{_esc(MODEL_LABELS.get(m, m))}</th>" for m in models)
              + ("<th rowspan='2'>after − before (paired)</th>" if both else "")
              + "<th rowspan='2'>baseline</th></tr><tr>"
              + f"<th>pass@1</th><th>pass@{p.num_samples}</th>" * len(models) + "</tr>")
    rows = []
    for task in results.task_names():
        scores = {m: results.score(m, task) for m in models}
        row = [_esc(task), str(next((s.num_questions for s in scores.values() if s), 0))]
        for s in scores.values():
            passk = None if s is None else s.pass_at_k
            row += [_esc(s.percent(NBSP_PM)) if s else "–", "–" if passk is None else f"{100 * passk:.1f}"]
        row += [paired_text(scores["student_after"], scores["student_before"], NBSP_PM)] if both else []
        b = results.baselines.get(task)
        rows.append(row + [f"{100 * b.pass_at_1:.1f} (always {_esc(b.answer)})" if b else "–"])
    lines = [f"<li><code>{_esc(name)}</code> v{_esc(t.version)} ({_esc(t.source)}): {_esc(t.dataset or '?')}"
             f"{', split ' + _esc(t.split) if t.split else ''}; {t.num_fewshot}-shot; prompt: {_esc(t.prompt)}; "
             f"scored on {_esc(t.scored_text)}; answer: {_esc(t.extraction)}</li>" for name, t in p.task_info.items()]
    lines += [f"<li>{_esc(MODEL_LABELS.get(m, m))}: <code>{_esc(results.models[m].model)}</code></li>" for m in models]
    return body + svg_eval(results) + _table(header, rows) + f"<ul class='small'>{''.join(lines)}</ul>"


# ----------------------------------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;padding:0 16px;max-width:980px;
color:#222;overflow-wrap:anywhere}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.chart{display:block;max-width:100%;height:auto}.chart text{font-size:12px;fill:#333}
.chart .tick{fill:#666;font-size:11px}.chart .axis,.chart .group{font-weight:600}
.empty{color:#888;font-style:italic}.error{color:#b00}.warning{color:#8a5a00;background:#fff6e0;padding:4px 8px}.note,.small{color:#555;font-size:.88em}.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:6px 0;overflow-wrap:break-word}
td,th{padding:3px 7px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
.sample{border:1px solid #ddd;border-radius:6px;margin:8px 0;padding:6px 10px}
.sample.kept{border-left:5px solid #54A24B}.sample.rejected{border-left:5px solid #E45756}
pre{white-space:pre-wrap;overflow-wrap:anywhere}#controls{margin:8px 0}#errors{color:#b00}
.sample pre{max-height:260px;overflow:auto;background:#f7f7f7;padding:6px}
"""

JS = """
(function(){
  var data = JSON.parse(document.getElementById('sample-data').textContent);
  var list = document.getElementById('sample-list'), kind = document.getElementById('kind'),
      reason = document.getElementById('reason'), query = document.getElementById('query');
  var reasons = {};
  data.forEach(function(s){ s.reasons.forEach(function(r){ reasons[r] = 1; }); });
  Object.keys(reasons).sort().forEach(function(r){
    var o = document.createElement('option'); o.value = r; o.textContent = r; reason.appendChild(o); });
  function render(){
    list.textContent = '';
    var shown = 0;
    data.forEach(function(s){
      if (kind.value !== 'all' && s.status !== kind.value) return;
      if (reason.value !== 'any' && s.reasons.indexOf(reason.value) < 0) return;
      if (query.value && (s.problem + s.completion).toLowerCase().indexOf(query.value.toLowerCase()) < 0) return;
      var d = document.createElement('details'); d.className = 'sample ' + s.status;
      var sm = document.createElement('summary');
      sm.textContent = '[' + s.status + '] ' + s.id + ' (' + s.tokens + ' tokens, ' + s.finish + ') ' +
        (s.reasons.length ? s.reasons.join(', ') : 'passed all verifiers');
      d.appendChild(sm);
      var p = document.createElement('p'); p.textContent = 'Problem: ' + s.problem + '  Gold: ' + s.gold;
      d.appendChild(p);
      var pre = document.createElement('pre'); pre.textContent = s.completion; d.appendChild(pre);
      list.appendChild(d); shown++;
    });
    document.getElementById('shown').textContent = shown + ' of ' + data.length + ' samples shown';
  }
  [kind, reason, query].forEach(function(el){ el.addEventListener('input', render); });
  render();
  var root = document.documentElement;
  document.body.setAttribute('data-overflow', root.scrollWidth > root.clientWidth ? 'yes' : 'no');
  document.body.setAttribute('data-rendered', 'ok');
})();
"""


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{_esc(title)}</h2>{body}</section>"


def _curation_notes(gstats: dict) -> str:
    """The generate stage's question curation: the student's pre-screen and the resampling rounds."""
    out = ""
    if ps := gstats.get("prescreen"):
        out += (f"<p class='note'>student pre-screen ({_esc(ps['model'])}, {ps['samples']} samples per prompt): solved "
                f"{ps['solved']} of {ps['prompts']} prompts (at &ge; {ps['solved_at']:.0%} correct), {ps['dropped']} dropped "
                "before the teacher sampled</p>")
    if rs := gstats.get("resample"):
        rounds = ", ".join(f"round {r['round']}: {r['prompts']} prompts, {r['verified']} verified" for r in rs["per_round"])
        out += f"<p class='note'>resampling until verified: {rounds}; never verified {rs['never_verified']}</p>"
    return out


def _difficulty_section(fstats, gstats: dict | None = None) -> str:
    """How many prompts the teacher solved at each rate over its samples (FilterStats.pass_rates), and the
    generate stage's curation (pre-screen, resampling) when it ran."""
    pr = fstats.pass_rates if fstats is not None else None
    if not pr:
        return _curation_notes(gstats or {}) or _empty("no pass rates (filter has not run, or ran before they were recorded)")
    bars = svg_bars([(f"{float(rate):.0%}", count, str(count))
                     for rate, count in sorted(pr["histogram"].items(), key=lambda kv: float(kv[0]))])
    sel = fstats.selection
    rules = ""
    if sel and sel.get("rules"):
        rows = "".join(f"<tr><td>{_esc(r)}</td><td>{c['prompts']}</td><td>{c['traces']}</td></tr>"
                       for r, c in sel["rules"].items())
        rules = (f"<p class='note'>selection: {sel['prompts_in']} prompts with a passing trace, {sel['prompts_out']} "
                 f"kept</p><table><tr><th>rule</th><th>prompts removed</th><th>traces removed</th></tr>{rows}</table>")
    return (f"<p class='note'>{pr['prompts']} prompts, mean pass rate {pr['mean']:.0%}; never solved "
            f"{pr['never']}, always solved {pr['always']} (filter.selection.min_pass_rate / max_pass_rate "
            f"drop either end; bins / bin_shares keep a share of each difficulty)</p>" + bars + rules
            + _curation_notes(gstats or {}))


def _teachers_section(run_dir: Path, stages: dict) -> str:
    """Per teacher of `generate.teachers` (from the generate manifest's config): model, routing, counts, filter
    funnel and scores (distillkit/publish/teachers.py); "" for a one-teacher run (no section)."""
    from distillkit.publish.teachers import SCORE_NOTE, teacher_rows, teachers_of

    gm = stages["generate"]
    if gm is None or not teachers_of(gm.config):
        return ""
    try:
        results = EvalResults.read(run_dir / "evaluate")
    except DistillkitError:  # the evaluation section says what is wrong with it
        results = None
    rows = teacher_rows(gm.config, gm, stages["filter"], results, run_dir / "generate")
    cells = [[_esc(r["name"]), f"<code>{_esc(r['model'])}</code>", _esc(r["reasoning"]), _esc(r["sources"]),
              _esc(r["sampling"]), str(r["prompts"]), str(r["samples"]), str(r["tokens"]),
              f"{r['kept']} of {r['filtered']}", _esc(r["pass_rate"]), _esc(r["rejections"]), _esc(r["scores"])]
             for r in rows]
    note = ("<p class='note'>Each prompt went to the teacher its source is routed to. Kept: that teacher's records "
            "the filter kept; rejected by: each rejected record once, at the step that rejected it first. "
            + _esc(SCORE_NOTE.format(name=rows[0]["name"], model=rows[0]["model"])) + "</p>")
    return _table(["teacher", "model", "reasoning", "sources", "sampling", "prompts", "samples", "tokens", "kept",
                   "verifier pass rate", "rejected by", "evaluation"], cells) + note


def _summary_section(stages: dict) -> str:
    """One row per stage: its counts, time and config hash, or "not run"."""
    rows = []
    for stage, m in stages.items():
        if m is None:
            rows.append([stage, "<span class='empty'>not run</span>", "", ""])
            continue
        counts = ", ".join(f"{k}: {v}" for k, v in list(m.counts.items())[:6])
        rows.append([stage, _esc(counts), f"{m.timings.get('total_s', 0):.0f}\u00a0s",
                     f"<code>{_esc(m.config_hash)}</code>"])
    return _table(["stage", "counts", "time", "config hash"], rows)


def _funnel_section(fstats: FilterStats) -> str:
    """The filter's warnings, then records remaining after each step (a bar each, with how many it removed)."""
    return "".join(f"<p class='warning'>warning: {_esc(w)}</p>" for w in fstats.warnings) + svg_bars(
        [(r.step, r.out, f"{r.out}" + (f" (−{r.rejected})" if r.rejected else "")) for r in fstats.funnel])


def _samples_browser(kept: list[dict], rejected: list[dict]) -> str:
    """The sampled records as embedded JSON, with the controls the page's script filters them by."""
    samples = [{"id": r["id"], "status": status, "problem": r.get("problem") or "", "gold": r.get("gold_answer") or "",
                "completion": (r.get("prefill") or "") + (r.get("completion") or ""),
                "tokens": r.get("completion_tokens") or 0, "finish": r.get("finish_reason") or "",
                "reasons": _reasons_of(r)}
               for status, recs in (("kept", kept), ("rejected", rejected)) for r in recs]
    sample_json = json.dumps(samples).replace("</", "<\\/")  # no early </script>
    return ("<div id='controls'><select id='kind'><option value='all'>kept and rejected</option>"
            "<option value='kept'>kept</option><option value='rejected'>rejected</option></select> "
            "<select id='reason'><option value='any'>any reason</option></select> "
            "<input id='query' placeholder='search text'> <span id='shown'></span></div>"
            f"<div id='sample-list'></div><script type='application/json' id='sample-data'>{sample_json}</script>")


def build_report(run_dir: str | Path, out_path: str | Path | None = None, num_samples: int = 60) -> Path:
    """Write RUN_DIR/report.html (or out_path) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillkitError(f"{run_dir}: no such run folder; give the output_dir of a run, e.g. runs/quickstart")
    optional = ["score"] if (run_dir / "score").is_dir() else []  # listed only where the run has it
    stages = {s: read_manifest(run_dir / s) for s in ("generate", "filter", *optional, "train", "evaluate", "publish")}
    if not any(stages.values()):
        raise DistillkitError(f"{run_dir} holds no finished stage (no */manifest.json); run a stage first")

    verdicts: Counter = Counter()
    kept, kept_len = _sample(run_dir / "filter", num_samples // 2, verdicts)
    rejected, rej_len = _sample(run_dir / "filter" / "rejected", num_samples // 2, verdicts, seed=1)
    if not kept and not rejected:  # no filter yet: show the raw generations
        kept, kept_len = _sample(run_dir / "generate", num_samples, Counter())
    lengths = svg_histogram({"kept": kept_len, "rejected": rej_len} if rej_len else {"generated": kept_len})

    fm = stages["filter"]
    fstats = FilterStats.of(fm) if fm is not None else None
    if fm is None:
        funnel = reasons = _empty("filter has not run")
    else:
        funnel = _funnel_section(fstats)
        reasons = _reasons_section(_reason_counts(verdicts, fstats, bool(rej_len) or not fm.counts.get("rejected")))
    difficulty = _difficulty_section(fstats, stages["generate"].stats if stages["generate"] is not None else None)

    body = "".join([
        _section("summary", "Run summary", _summary_section(stages)),
        *([_section("teachers", "Teachers (routed by prompt source)", teachers)]
          if (teachers := _teachers_section(run_dir, stages)) else []),
        _section("funnel", "Filter funnel (records remaining after each step)", funnel),
        _section("reasons", "Rejection reasons", reasons),
        _section("difficulty", "Teacher pass rate per prompt (prompts at each rate)", difficulty),
        _section("lengths", "Completion lengths, kept vs rejected", lengths),
        _section("training", "Training loss (total, CE and KL)", _training_section(stages["train"])),
        _section("evaluation", "Evaluation: pass@1 over k samples (± standard error)",
                 _evaluation_section(run_dir / "evaluate")),
        *([_section("compare", "Which arm helps: pass@1 over training seeds (95% intervals)", compare)]
          if (compare := compare_section(run_dir / "compare")) else []),
        _section("samples", "Samples", _samples_browser(kept, rejected)),
    ])
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><title>distillkit report: "
            f"{_esc(run_dir.name)}</title><style>{CSS}</style>"
            "<script>window.addEventListener('error',function(e){var el=document.getElementById('errors');"
            "if(el){el.textContent+=String(e.message)+'\\n';}});</script></head>"
            f"<body><h1>distillkit run report: {_esc(run_dir.name)}</h1><pre id='errors'></pre>{body}"
            f"<script>{JS}</script></body></html>")
    out = Path(out_path) if out_path else run_dir / "report.html"
    atomic_write_text(out, page)
    return out


# ----------------------------------------------------------------------------------------- compare


def compare_section(compare_dir: Path) -> str:
    """The chart and the tables of `distillkit compare`, or "" where compare was not run."""
    import json

    path = Path(compare_dir) / "results.json"
    if not path.exists():
        return ""
    results = json.loads(path.read_text())
    text = (Path(compare_dir) / "comparison.md").read_text() if (Path(compare_dir) / "comparison.md").exists() else ""
    note = ("<p class='small'>Each row: one arm's trained student. Dots: the training seeds; the bar: their mean; "
            "the whisker: its 95% interval (seed and question variance). Dashed: the teacher; dotted: the untrained "
            "student and the constant answer.</p>")
    return svg_compare(results) + note + f"<pre>{_esc(text)}</pre>"


def build_compare_report(compare_dir: str | Path) -> Path:
    """COMPARE_DIR/report.html: the compare section alone, self-contained like the run report."""
    compare_dir = Path(compare_dir)
    body = _section("compare", "Which arm helps: pass@1 over training seeds (95% intervals)",
                    compare_section(compare_dir) or _empty("no results.json yet"))
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>distillkit compare: "
            f"{_esc(compare_dir.parent.name)}</title><style>{CSS}</style></head>"
            f"<body><h1>distillkit compare: {_esc(compare_dir.parent.name)}</h1>{body}</body></html>")
    out = compare_dir / "report.html"
    atomic_write_text(out, page)
    return out
