"""The report's charts as inline SVG strings (no plotting library, no external assets): bars, histograms, line
charts, and the pass@1 charts of an evaluation and of `distillkit compare`."""

from __future__ import annotations

import html
import math
from typing import Any

from distillkit.schemas.evaluate import MODEL_LABELS, EvalResults

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _empty(text: str = "nothing to show") -> str:
    return f"<p class='empty'>{_esc(text)}</p>"


def _svg(width: float, height: float) -> str:
    """An SVG that scales down with the page (viewBox) but never grows past its drawn size."""
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' viewBox='0 0 {width} {height:.0f}' "
            f"width='{width}' height='{height:.0f}' role='img'>")


def _ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    span = (hi - lo) or abs(hi) or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if span / (step * m) <= n)
    step = max(1.0, round(step)) if integer else step
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def svg_bars(items: list[tuple], width: int = 940, bar_h: int = 22, color: str = PALETTE[0], fmt: str = "{:g}") -> str:
    """Horizontal bar chart of (label, value) or (label, value, value text); the text defaults to fmt."""
    if not items:
        return _empty()
    label_w = 230
    vmax = max(item[1] for item in items) or 1
    out = [_svg(width, len(items) * (bar_h + 6) + 8)]
    for i, (label, value, *text) in enumerate(items):
        text = text[0] if text else fmt.format(value)
        y = 4 + i * (bar_h + 6)
        w = max(1.0, (width - label_w - 120) * value / vmax)
        out.append(f"<g class='bar'><text x='{label_w - 6}' y='{y + bar_h * 0.7}' text-anchor='end'>"
                   f"{_esc(label)}</text>"
                   f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='{color}'>"
                   f"<title>{_esc(label)}: {_esc(text)}</title></rect>"
                   f"<text class='value' x='{label_w + w + 4:.1f}' y='{y + bar_h * 0.7}'>{_esc(text)}</text></g>")
    return "".join(out) + "</svg>"


def svg_histogram(series: dict[str, list[float]], bins: int = 20, width: int = 940, height: int = 220) -> str:
    """Histograms on a shared bin grid, the series' bars side by side within each bin."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return _empty()
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    step = (hi - lo) / bins
    counts = {name: [0] * bins for name in series}
    for name, vs in series.items():
        for v in vs:
            counts[name][min(bins - 1, int((v - lo) / step))] += 1
    cmax = max(max(c) for c in counts.values()) or 1
    left, bottom, top = 40, 30, 24
    plot_w, plot_h = width - left - 10, height - bottom - top
    out = [_svg(width, height + 24)]
    for k, (name, c) in enumerate(counts.items()):
        color = PALETTE[k % len(PALETTE)]
        for b, n in enumerate(c):
            if n:
                h, w = plot_h * n / cmax, (plot_w / bins - 2) / len(counts)
                out.append(f"<rect x='{left + b * plot_w / bins + k * w:.1f}' y='{top + plot_h - h:.1f}' "
                           f"width='{w:.1f}' height='{h:.1f}' fill='{color}'><title>{_esc(name)}: {n} in "
                           f"[{lo + b * step:.0f}, {lo + (b + 1) * step:.0f})</title></rect>")
        out.append(f"<rect x='{left + k * 150}' y='{height + 8}' width='12' height='12' fill='{color}'/>"
                   f"<text x='{left + k * 150 + 16}' y='{height + 18}'>{_esc(name)} ({len(series[name])})</text>")
    out.append(f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' stroke='#999'/>"
               f"<text x='{left}' y='{top + plot_h + 16}'>{lo:.0f}</text>"
               f"<text x='{left + plot_w}' y='{top + plot_h + 16}' text-anchor='end'>{hi:.0f} tokens</text>"
               f"<text x='4' y='14'>{cmax} records (tallest bar)</text></svg>")
    return "".join(out)


def svg_lines(series: dict[str, list[tuple[float, float]]], width: int = 940, height: int = 280,
              x_label: str = "step", y_label: str = "loss") -> str:
    """Line chart of (x, y) series on shared, labelled axes with tick values; every point is drawn
    (a circle with its value as tooltip) so that a short run's few logged steps stay visible."""
    series = {k: [p for p in ps if p[1] is not None and math.isfinite(p[1])] for k, ps in series.items()}
    points = [p for ps in series.values() for p in ps]
    if not points:
        return _empty()
    xt = _ticks(0, max(p[0] for p in points), integer=True)
    yt = _ticks(min(0.0, min(p[1] for p in points)), max(p[1] for p in points))
    left, right, top, bottom = 64, 16, 10, 46
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + pw * (x - xt[0]) / ((xt[-1] - xt[0]) or 1)

    def sy(y):
        return top + ph - ph * (y - yt[0]) / ((yt[-1] - yt[0]) or 1)

    out = [_svg(width, height + 26)]
    for t in yt:
        out.append(f"<line x1='{left}' y1='{sy(t):.1f}' x2='{left + pw}' y2='{sy(t):.1f}' stroke='#eee'/>"
                   f"<text class='tick' x='{left - 6}' y='{sy(t) + 4:.1f}' text-anchor='end'>{t:g}</text>")
    for t in xt:
        out.append(f"<line x1='{sx(t):.1f}' y1='{top + ph}' x2='{sx(t):.1f}' y2='{top + ph + 4}' stroke='#999'/>"
                   f"<text class='tick' x='{sx(t):.1f}' y='{top + ph + 17}' text-anchor='middle'>{t:g}</text>")
    out.append(f"<line x1='{left}' y1='{top + ph}' x2='{left + pw}' y2='{top + ph}' stroke='#999'/>"
               f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + ph}' stroke='#999'/>"
               f"<text class='axis' x='{left + pw / 2}' y='{top + ph + 36}' text-anchor='middle'>{_esc(x_label)}</text>"
               f"<text class='axis' transform='translate(16 {top + ph / 2}) rotate(-90)' "
               f"text-anchor='middle'>{_esc(y_label)}</text>")
    for k, (name, ps) in enumerate((name, ps) for name, ps in series.items() if ps):
        color = PALETTE[k % len(PALETTE)]
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(ps))
        out.append(f"<path d='{path}' fill='none' stroke='{color}' stroke-width='2'/>")
        if len(ps) <= 200:
            out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3.5' fill='{color}'><title>{_esc(name)}, "
                    f"{_esc(x_label)} {x:g}: {y:.4g}</title></circle>" for x, y in ps]
        out.append(f"<rect x='{left + k * 190}' y='{height + 10}' width='12' height='12' fill='{color}'/>"
                   f"<text x='{left + k * 190 + 16}' y='{height + 20}'>{_esc(name)} (last {ps[-1][1]:.4g})</text>")
    return "".join(out) + "</svg>"


def _percent_grid(xt: list[float], label_w: float, scale: float, height: float) -> list[str]:
    """Vertical grid lines with their % labels under a horizontal chart."""
    return [f"<line x1='{label_w + t * scale:.1f}' y1='0' x2='{label_w + t * scale:.1f}' y2='{height - 26}' "
            f"stroke='#eee'/><text class='tick' x='{label_w + t * scale:.1f}' y='{height - 12}' "
            f"text-anchor='middle'>{t:g}%</text>" for t in xt]


def svg_eval(results: EvalResults, width: int = 940, bar_h: int = 22) -> str:
    """pass@1 (%) ± se: one group per task, one bar per model with a ±1 se whisker and its value;
    the dashed line is the task's constant-answer baseline."""
    models, tasks = results.model_keys(), results.task_names()
    scores = {(m, t): s for m in models for t in tasks if (s := results.score(m, t))}
    if not scores:
        return _empty()
    label_w, right = 130, 100
    hi = max([100 * (s.pass_at_1 + (s.stderr or 0)) for s in scores.values()]
             + [100 * b.pass_at_1 for b in results.baselines.values()])
    xt = _ticks(0, min(100.0, max(hi, 1.0)))
    scale = (width - label_w - right) / xt[-1]
    group_h = 20 + len(models) * (bar_h + 4)
    height = len(tasks) * (group_h + 8) + 30
    out = [_svg(width, height), *_percent_grid(xt, label_w, scale, height)]
    for g, task in enumerate(tasks):
        y0 = g * (group_h + 8)
        out.append(f"<text class='group' x='4' y='{y0 + 14}'>{_esc(task)}</text>")
        for i, m in enumerate(models):
            y = y0 + 20 + i * (bar_h + 4)
            out.append(f"<text x='{label_w - 6}' y='{y + bar_h * 0.7}' text-anchor='end'>"
                       f"{_esc(MODEL_LABELS.get(m, m))}</text>")
            if (s := scores.get((m, task))) is None:
                out.append(f"<text x='{label_w + 4}' y='{y + bar_h * 0.7}' class='empty'>not evaluated</text>")
                continue
            mean, se = 100 * s.pass_at_1, 100 * (s.stderr or 0)
            lo, hi = label_w + max(0.0, mean - se) * scale, label_w + min(100.0, mean + se) * scale
            out.append(f"<g class='bar' data-model='{_esc(m)}' data-task='{_esc(task)}'>"
                       f"<rect x='{label_w}' y='{y}' width='{max(1.0, mean * scale):.1f}' height='{bar_h}' "
                       f"fill='{PALETTE[i % 8]}'><title>{_esc(MODEL_LABELS.get(m, m))}, {_esc(task)}: pass@1 "
                       f"{_esc(s.percent())}% over {s.num_questions} questions</title></rect>"
                       f"<line x1='{lo:.1f}' y1='{y + bar_h / 2}' x2='{hi:.1f}' y2='{y + bar_h / 2}' stroke='#222'/>"
                       f"<text class='value' x='{max(hi, label_w + mean * scale) + 6:.1f}' "
                       f"y='{y + bar_h * 0.7}'>{_esc(s.percent())}</text></g>")
        if (b := results.baselines.get(task)) is not None:
            x = label_w + 100 * b.pass_at_1 * scale
            out.append(f"<line x1='{x:.1f}' y1='{y0 + 18}' x2='{x:.1f}' y2='{y0 + group_h}' stroke='#555' "
                       f"stroke-dasharray='4 3'><title>constant-answer baseline ({_esc(b.answer)}): "
                       f"{100 * b.pass_at_1:.1f}%</title></line>")
    return "".join(out) + "</svg>"


def svg_compare(results: dict, width: int = 940, row_h: int = 26) -> str:
    """`distillkit compare`'s results.json: per task one row per arm, a dot per training seed, the mean as a bar tick
    with its 95% interval as a whisker; dashed lines for the teacher and the untrained student."""
    tasks = list(dict.fromkeys(t for a in results["arms"].values() for t in a["pass_at_1"]))
    if not tasks:
        return _empty("no arm has finished a seed yet")
    arms = list(results["arms"])
    label_w, right = 130, 130
    values = [100 * v for a in results["arms"].values() for iv in a["pass_at_1"].values()
              for v in (iv["high"], *iv["per_seed"])] + [100 * v for r in results.get("reference", {}).values()
                                                        for v in r.values()]
    xt = _ticks(0, min(100.0, max(max(values, default=1.0), 1.0)))
    scale = (width - label_w - right) / xt[-1]
    group_h = 20 + len(arms) * row_h
    height = len(tasks) * (group_h + 8) + 30
    out = [_svg(width, height), *_percent_grid(xt, label_w, scale, height)]
    for g, task in enumerate(tasks):
        y0 = g * (group_h + 8)
        out.append(f"<text class='group' x='4' y='{y0 + 14}'>{_esc(task)}</text>")
        for i, arm in enumerate(arms):
            y = y0 + 20 + i * row_h + row_h / 2
            out.append(f"<text x='{label_w - 6}' y='{y + 4}' text-anchor='end'>{_esc(arm)}</text>")
            iv = results["arms"][arm]["pass_at_1"].get(task)
            if iv is None:
                out.append(f"<text x='{label_w + 4}' y='{y + 4}' class='empty'>no finished seed</text>")
                continue
            color = PALETTE[i % 8]
            lo, hi = label_w + max(0.0, 100 * iv["low"]) * scale, label_w + min(100.0, 100 * iv["high"]) * scale
            mean = label_w + 100 * iv["mean"] * scale
            half = "" if iv["half_width"] != iv["half_width"] else f" ± {100 * iv['half_width']:.1f}"
            out.append(f"<g class='arm' data-arm='{_esc(arm)}' data-task='{_esc(task)}'>"
                       f"<line x1='{lo:.1f}' y1='{y}' x2='{hi:.1f}' y2='{y}' stroke='{color}' stroke-width='3'/>"
                       f"<rect x='{mean - 2:.1f}' y='{y - 8}' width='4' height='16' fill='{color}'><title>{_esc(arm)}"
                       f", {_esc(task)}: {100 * iv['mean']:.1f}{half} (95% interval over {iv['seeds']} seeds x "
                       f"{iv['questions']} questions)</title></rect>")
            for s, v in enumerate(iv["per_seed"]):
                out.append(f"<circle cx='{label_w + 100 * v * scale:.1f}' cy='{y}' r='3.5' fill='white' "
                           f"stroke='{color}'><title>seed {s}: {100 * v:.1f}</title></circle>")
            out.append(f"<text class='value' x='{hi + 6:.1f}' y='{y + 4}'>{100 * iv['mean']:.1f}{_esc(half)}</text>"
                       "</g>")
        for j, (who, v) in enumerate(sorted(results.get("reference", {}).get(task, {}).items())):
            x = label_w + 100 * v * scale
            out.append(f"<line x1='{x:.1f}' y1='{y0 + 18}' x2='{x:.1f}' y2='{y0 + group_h}' stroke='#555' "
                       f"stroke-dasharray='{'4 3' if who == 'teacher' else '1 3'}'><title>{_esc(who)}: "
                       f"{100 * v:.1f}%</title></line>")
    return "".join(out) + "</svg>"
