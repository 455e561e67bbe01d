"""Per-teacher facts of a run with several teachers (`generate.teachers`), for the cards and the report.

One row per teacher: its name, model, backend, whether it reasons, its prompt sources, prefill and sampling
overrides (the generate config); its prompts, samples and tokens (the generate manifest's `stats.teachers`, else
counted from the generated records by `records.teacher_name`); its filter funnel (the filter manifest's
`stats.teachers`: records kept, rejected by step and reason); and its scores. The evaluate stage scores one
teacher, `generate.teacher`, which is the first of `generate.teachers`: its row carries those scores and says so;
the other teachers were not evaluated.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillkit.records import Manifest
from distillkit.schemas.evaluate import EvalResults
from distillkit.schemas.filter import FilterStats


def teachers_of(generate_config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The `generate.teachers` entries of a generate config (as dumped to JSON), [] for a one-teacher run."""
    return list((generate_config or {}).get("teachers") or [])


def count_from_records(folder: Path) -> dict[str, dict[str, int]]:
    """{teacher name: {prompts, samples, tokens, shards}} counted from a generate folder's shards (for a manifest
    written before the generate stage counted them)."""
    import pyarrow.parquet as pq

    from distillkit.records import list_shards, teacher_name

    prompts: dict[str, set] = {}
    counts: dict[str, Counter] = {}
    for shard in list_shards(folder) if folder.is_dir() else []:
        names = pq.read_schema(shard).names
        cols = [c for c in ("prompt_id", "teacher", "meta", "completion_tokens") if c in names]
        t = pq.read_table(shard, columns=cols).to_pylist()
        in_shard = set()
        for row in t:
            name = teacher_name(row)
            prompts.setdefault(name, set()).add(row.get("prompt_id"))
            c = counts.setdefault(name, Counter())
            c["samples"] += 1
            c["tokens"] += int(row.get("completion_tokens") or 0)
            in_shard.add(name)
        for name in in_shard:
            counts[name]["shards"] += 1
    return {name: {"prompts": len(prompts[name]), "samples": c["samples"], "tokens": c["tokens"],
                   "shards": c["shards"]} for name, c in counts.items()}


def _rejections_text(rejections: dict[str, dict[str, int]]) -> str:
    pairs = [(f"{step}: {reason}", n) for step, by in rejections.items() for reason, n in by.items()]
    return ", ".join(f"{k} {n}" for k, n in sorted(pairs, key=lambda kv: -kv[1])[:6]) or "–"


def _scores_text(results: EvalResults | None, first: bool) -> str:
    if not first:
        return "not evaluated"
    if results is None or "teacher" not in results.models:
        return "–"
    return "; ".join(f"{task} {s.percent()}" for task in results.task_names()
                     if (s := results.score("teacher", task)) is not None) or "–"


def teacher_rows(generate_config: dict[str, Any] | None, generate_manifest: Manifest | None,
                 filter_manifest: Manifest | None, results: EvalResults | None = None,
                 generate_dir: Path | None = None, model_label: Callable[[str], str] = str) -> list[dict[str, Any]]:
    """One dict per teacher of `generate.teachers` (see the module doc); [] for a one-teacher run. `model_label`
    names a model spec (the cards give its Hub id)."""
    teachers = teachers_of(generate_config)
    if not teachers:
        return []
    made = ((generate_manifest.stats if generate_manifest else None) or {}).get("teachers")
    if not made and generate_dir is not None:
        made = count_from_records(generate_dir)
    made = made or {}
    fstats = FilterStats.of(filter_manifest) if filter_manifest is not None else None
    funnel = fstats.teachers if fstats is not None else {}
    rows = []
    for i, t in enumerate(teachers):
        name, g, f = t["name"], made.get(t["name"]) or {}, funnel.get(t["name"])
        overrides = ", ".join(f"{k}={v}" for k, v in sorted((t.get("sampling") or {}).items()))
        prefill = t.get("prefill", "inherit")
        rows.append({
            "name": name, "model": model_label(t["model"]), "backend": t.get("backend", ""),
            "reasoning": "yes" if t.get("reasoning", True) else "no",
            "sources": ", ".join(t.get("sources") or []) or "every other source",
            "prefill": ("inherited" if t.get("reasoning", True) else "empty reasoning block") if prefill == "inherit"
            else json.dumps(prefill),
            "sampling": overrides or "as generate.sampling",
            "prompts": g.get("prompts", "?"), "samples": g.get("samples", "?"), "tokens": g.get("tokens", "?"),
            "kept": f.kept if f is not None else "–", "filtered": f.records if f is not None else "–",
            "pass_rate": f"{f.pass_rate:.1%}" if f is not None else "–",
            "rejections": _rejections_text(f.rejections) if f is not None else "–",
            "scores": _scores_text(results, first=i == 0),
        })
    return rows


def teachers_intro(rows: list[dict[str, Any]]) -> str:
    """"**A** (reasoning) and **B** (non-reasoning)" for a card's first sentence."""
    parts = [f"**{r['model']}** ({'reasoning' if r['reasoning'] == 'yes' else 'non-reasoning'}, {r['sources']})"
             for r in rows]
    return ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]


SCORE_NOTE = ("The evaluate stage scores one teacher, the first of `generate.teachers` ({name}, `{model}`); "
              "its scores are the \"teacher\" column of the evaluation. The other teachers were not evaluated.")
