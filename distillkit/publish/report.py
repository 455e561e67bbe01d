"""`distillkit report RUN_DIR`: one self-contained HTML page of a run (no network, no external assets).

Sections: summary, filter funnel, rejection reasons, length histograms (kept vs rejected),
training loss curves (CE and KL), evaluation comparison (pass@1 with standard error), and a
browsable sample of kept and rejected traces with their reasons. Charts are inline SVG drawn here;
the sample browser is a few lines of inline JavaScript over embedded JSON. A section whose stage
has not run says so instead of disappearing.
"""

from __future__ import annotations

import html
import json
import math
import random
from pathlib import Path
from typing import Any

from distillkit.errors import DistillkitError
from distillkit.records import atomic_write_text, iter_records, list_shards, read_manifest

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]
SECTIONS = ["summary", "funnel", "reasons", "lengths", "training", "evaluation", "samples"]


# ----------------------------------------------------------------------------------------- svg


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def svg_bars(items: list[tuple[str, float]], width: int = 640, bar_h: int = 22, color: str = PALETTE[0],
             fmt: str = "{:g}") -> str:
    """Horizontal bar chart of (label, value)."""
    if not items:
        return "<p class='empty'>nothing to show</p>"
    label_w, pad = 220, 8
    vmax = max(v for _, v in items) or 1
    height = len(items) * (bar_h + 6) + pad
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height}' role='img'>"]
    for i, (label, value) in enumerate(items):
        y = pad // 2 + i * (bar_h + 6)
        w = max(1.0, (width - label_w - 70) * value / vmax)
        out.append(f"<text x='{label_w - 6}' y='{y + bar_h * 0.7}' text-anchor='end'>{_esc(label)}</text>"
                   f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='{color}'>"
                   f"<title>{_esc(label)}: {_esc(fmt.format(value))}</title></rect>"
                   f"<text x='{label_w + w + 4:.1f}' y='{y + bar_h * 0.7}'>{_esc(fmt.format(value))}</text>")
    out.append("</svg>")
    return "".join(out)


def svg_histogram(series: dict[str, list[float]], bins: int = 20, width: int = 640, height: int = 220) -> str:
    """Overlaid histograms with a shared bin grid (one color per series, translucent)."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return "<p class='empty'>nothing to show</p>"
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    step = (hi - lo) / bins
    counts = {}
    for name, vs in series.items():
        c = [0] * bins
        for v in vs:
            c[min(bins - 1, int((v - lo) / step))] += 1
        counts[name] = c
    cmax = max(max(c) for c in counts.values()) or 1
    left, bottom, top = 40, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height + 24}' role='img'>"]
    for k, (name, c) in enumerate(counts.items()):
        color = PALETTE[k % len(PALETTE)]
        for b, n in enumerate(c):
            if n:
                h = plot_h * n / cmax
                x = left + b * plot_w / bins
                out.append(f"<rect x='{x:.1f}' y='{top + plot_h - h:.1f}' width='{plot_w / bins - 1:.1f}' "
                           f"height='{h:.1f}' fill='{color}' fill-opacity='0.55'><title>{_esc(name)}: {n} in "
                           f"[{lo + b * step:.0f}, {lo + (b + 1) * step:.0f})</title></rect>")
        out.append(f"<rect x='{left + k * 150}' y='{height + 8}' width='12' height='12' fill='{color}'/>"
                   f"<text x='{left + k * 150 + 16}' y='{height + 18}'>{_esc(name)} ({len(series[name])})</text>")
    out.append(f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' stroke='#999'/>"
               f"<text x='{left}' y='{top + plot_h + 16}'>{lo:.0f}</text>"
               f"<text x='{left + plot_w}' y='{top + plot_h + 16}' text-anchor='end'>{hi:.0f} tokens</text>"
               f"<text x='4' y='{top + 10}'>{cmax}</text></svg>")
    return "".join(out)


def svg_lines(series: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 240,
              x_label: str = "step") -> str:
    """Line chart of several (x, y) series sharing axes."""
    points = [p for ps in series.values() for p in ps if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return "<p class='empty'>nothing to show</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) if max(ys) > min(0.0, min(ys)) else 1.0
    left, bottom, top = 48, 30, 10
    pw, ph = width - left - 10, height - bottom - top

    def sx(x):
        return left + pw * (x - x0) / (x1 - x0)

    def sy(y):
        return top + ph - ph * (y - y0) / (y1 - y0)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height + 24}' role='img'>",
           f"<line x1='{left}' y1='{top + ph}' x2='{left + pw}' y2='{top + ph}' stroke='#999'/>",
           f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + ph}' stroke='#999'/>",
           f"<text x='4' y='{top + 10}'>{y1:.3g}</text><text x='4' y='{top + ph}'>{y0:.3g}</text>",
           f"<text x='{left + pw}' y='{top + ph + 16}' text-anchor='end'>{_esc(x_label)} {x1:g}</text>"]
    for k, (name, ps) in enumerate(series.items()):
        ps = [p for p in ps if p[1] is not None and math.isfinite(p[1])]
        if not ps:
            continue
        color = PALETTE[k % len(PALETTE)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(ps))
        out.append(f"<path d='{path}' fill='none' stroke='{color}' stroke-width='2'/>")
        out.append(f"<rect x='{left + k * 150}' y='{height + 8}' width='12' height='12' fill='{color}'/>"
                   f"<text x='{left + k * 150 + 16}' y='{height + 18}'>{_esc(name)}</text>")
    out.append("</svg>")
    return "".join(out)


def svg_bars_with_error(items: list[tuple[str, float, float]], width: int = 640, bar_h: int = 26) -> str:
    """Horizontal bars of (label, mean, standard error) on a 0-100 scale, with +-1 se whiskers."""
    if not items:
        return "<p class='empty'>nothing to show</p>"
    label_w = 260
    scale = (width - label_w - 80) / 100.0
    height = len(items) * (bar_h + 8) + 8
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height}' role='img'>"]
    for i, (label, mean, se) in enumerate(items):
        y = 4 + i * (bar_h + 8)
        w = max(1.0, mean * scale)
        lo, hi = label_w + max(0.0, mean - se) * scale, label_w + min(100.0, mean + se) * scale
        out.append(f"<text x='{label_w - 6}' y='{y + bar_h * 0.7}' text-anchor='end'>{_esc(label)}</text>"
                   f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='{PALETTE[i % 8]}'>"
                   f"<title>{_esc(label)}: {mean:.1f} +- {se:.1f}</title></rect>"
                   f"<line x1='{lo:.1f}' y1='{y + bar_h / 2}' x2='{hi:.1f}' y2='{y + bar_h / 2}' stroke='#222'/>"
                   f"<text x='{hi + 6:.1f}' y='{y + bar_h * 0.7}'>{mean:.1f} ± {se:.1f}</text>")
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------------- data


def _funnel(stats: dict) -> list[tuple[str, float]]:
    """(step, records remaining) from a filter manifest's stats, whatever the exact layout."""
    funnel = stats.get("funnel")
    if isinstance(funnel, list):
        rows = []
        for step in funnel:
            name = step.get("step") or step.get("verifier") or step.get("name")
            value = step.get("out", step.get("kept", step.get("remaining")))
            if name is not None and value is not None:
                rows.append((str(name), float(value)))
        return rows
    if isinstance(funnel, dict):
        return [(str(k), float(v if not isinstance(v, dict) else v.get("out", 0))) for k, v in funnel.items()]
    return []


def _reasons(stats: dict) -> list[tuple[str, float]]:
    reasons = stats.get("reasons") or stats.get("rejection_reasons") or {}
    if isinstance(reasons, dict):
        flat = {}
        for k, v in reasons.items():
            if isinstance(v, dict):
                flat.update({f"{k}:{r}": n for r, n in v.items()})
            else:
                flat[k] = v
        return sorted(((k, float(v)) for k, v in flat.items()), key=lambda kv: -kv[1])
    return []


def _reasons_of(record: dict) -> list[str]:
    return [f"{v['verifier']}:{v['reason']}" for v in record.get("verdicts") or [] if v.get("passed") is False]


def _sample(folder: Path, n: int, seed: int = 0) -> tuple[list[dict], list[int]]:
    """Up to n records (reservoir sample) and the completion lengths of all records."""
    rng = random.Random(seed)
    lengths, chosen = [], []
    if not folder.is_dir() or not list_shards(folder):
        return chosen, lengths
    cols = ["id", "problem", "gold_answer", "completion", "prefill", "completion_tokens", "finish_reason", "verdicts"]
    for i, rec in enumerate(iter_records(folder, columns=cols)):
        lengths.append(rec.get("completion_tokens") or 0)
        if len(chosen) < n:
            chosen.append(rec)
        elif (j := rng.randint(0, i)) < n:
            chosen[j] = rec
    return chosen, lengths


def _loss_curves(train_dir: Path) -> dict[str, list[tuple[float, float]]]:
    manifest = read_manifest(train_dir)
    history = []
    if manifest is not None:
        history = manifest.stats.get("loss_curve") or manifest.stats.get("log_history") or []
    if not history and (train_dir / "log_history.json").exists():
        history = json.loads((train_dir / "log_history.json").read_text())
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in history:
        step = row.get("step")
        if step is None:
            continue
        for key, name in (("loss", "total loss"), ("ce", "CE"), ("ce_loss", "CE"), ("kl", "KL"), ("kd", "KL"),
                          ("kd_loss", "KL")):
            if isinstance(row.get(key), (int, float)):
                curves.setdefault(name, []).append((float(step), float(row[key])))
    return curves


def _eval_items(eval_dir: Path) -> list[tuple[str, float, float]]:
    path = eval_dir / "results.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    items = []
    models = data.get("models", data)
    for model, tasks in models.items():
        if not isinstance(tasks, dict):
            continue
        for task, res in tasks.items():
            if isinstance(res, dict) and "pass@1" in res:
                mean, se = float(res["pass@1"]), float(res.get("stderr", res.get("pass@1_stderr", 0.0)) or 0.0)
                if mean <= 1.0 and se <= 1.0:  # fractions -> percent
                    mean, se = 100 * mean, 100 * se
                items.append((f"{model} / {task}", mean, se))
    return items


# ----------------------------------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:980px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.chart text{font-size:12px;fill:#333}.empty{color:#888;font-style:italic}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
.sample{border:1px solid #ddd;border-radius:6px;margin:8px 0;padding:6px 10px}
.sample.kept{border-left:5px solid #54A24B}.sample.rejected{border-left:5px solid #E45756}
.sample pre{white-space:pre-wrap;max-height:260px;overflow:auto;background:#f7f7f7;padding:6px}
.tag{display:inline-block;background:#eee;border-radius:3px;padding:0 5px;margin-right:4px;font-size:.85em}
#controls{margin:8px 0}#errors{color:#b00}
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
  document.body.setAttribute('data-rendered', 'ok');
})();
"""


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{_esc(title)}</h2>{body}</section>"


def build_report(run_dir: str | Path, out_path: str | Path | None = None, num_samples: int = 60) -> Path:
    """Write RUN_DIR/report.html (or out_path) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillkitError(f"{run_dir}: no such run folder; give the output_dir of a run, e.g. runs/quickstart")
    stages = {s: read_manifest(run_dir / s) for s in ("generate", "filter", "train", "evaluate", "publish")}
    if not any(stages.values()):
        raise DistillkitError(f"{run_dir} holds no finished stage (no */manifest.json); run a stage first")

    rows = []
    for stage, m in stages.items():
        if m is None:
            rows.append(f"<tr><td>{stage}</td><td colspan='3' class='empty'>not run</td></tr>")
            continue
        counts = ", ".join(f"{k}: {v}" for k, v in list(m.counts.items())[:6])
        rows.append(f"<tr><td>{stage}</td><td>{_esc(counts)}</td><td>{m.timings.get('total_s', 0):.0f} s</td>"
                    f"<td><code>{_esc(m.config_hash)}</code></td></tr>")
    summary = ("<table><tr><th>stage</th><th>counts</th><th>time</th><th>config hash</th></tr>"
               + "".join(rows) + "</table>")

    fstats = stages["filter"].stats if stages["filter"] else {}
    funnel = svg_bars(_funnel(fstats)) if fstats else "<p class='empty'>filter has not run</p>"
    reasons = svg_bars(_reasons(fstats), color=PALETTE[3]) if fstats else "<p class='empty'>filter has not run</p>"

    kept, kept_len = _sample(run_dir / "filter", num_samples // 2)
    rejected, rej_len = _sample(run_dir / "filter" / "rejected", num_samples // 2, seed=1)
    if not kept and not rejected:  # no filter yet: show the raw generations
        kept, kept_len = _sample(run_dir / "generate", num_samples)
    lengths = svg_histogram({"kept": kept_len, "rejected": rej_len} if rej_len else {"generated": kept_len})

    curves = _loss_curves(run_dir / "train")
    training = svg_lines(curves) if curves else "<p class='empty'>no training log</p>"
    evaluation = svg_bars_with_error(_eval_items(run_dir / "evaluate"))
    comparison = run_dir / "evaluate" / "comparison.md"
    if comparison.exists():
        evaluation += f"<pre>{_esc(comparison.read_text())}</pre>"

    samples = [{"id": r["id"], "status": status, "problem": r.get("problem") or "", "gold": r.get("gold_answer") or "",
                "completion": (r.get("prefill") or "") + (r.get("completion") or ""),
                "tokens": r.get("completion_tokens") or 0, "finish": r.get("finish_reason") or "",
                "reasons": _reasons_of(r)}
               for status, recs in (("kept", kept), ("rejected", rejected)) for r in recs]
    sample_json = json.dumps(samples).replace("</", "<\\/")  # no early </script>
    browser = ("<div id='controls'><select id='kind'><option value='all'>kept and rejected</option>"
               "<option value='kept'>kept</option><option value='rejected'>rejected</option></select> "
               "<select id='reason'><option value='any'>any reason</option></select> "
               "<input id='query' placeholder='search text'> <span id='shown'></span></div>"
               f"<div id='sample-list'></div><script type='application/json' id='sample-data'>{sample_json}</script>")

    body = "".join([
        _section("summary", "Run summary", summary),
        _section("funnel", "Filter funnel (records remaining after each step)", funnel),
        _section("reasons", "Rejection reasons", reasons),
        _section("lengths", "Completion lengths, kept vs rejected", lengths),
        _section("training", "Training loss (CE and KL)", training),
        _section("evaluation", "Evaluation: pass@1 over k samples (± standard error)", evaluation),
        _section("samples", "Samples", browser),
    ])
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>distillkit report: "
            f"{_esc(run_dir.name)}</title><style>{CSS}</style>"
            "<script>window.addEventListener('error',function(e){var el=document.getElementById('errors');"
            "if(el){el.textContent+=String(e.message)+'\\n';}});</script></head>"
            f"<body><h1>distillkit run report: {_esc(run_dir.name)}</h1><pre id='errors'></pre>{body}"
            f"<script>{JS}</script></body></html>")
    out = Path(out_path) if out_path else run_dir / "report.html"
    atomic_write_text(out, page)
    return out
