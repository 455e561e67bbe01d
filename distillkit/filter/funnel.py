"""The filter funnel for people: as plain lines (for an error message), as a rich table (for the CLI), and the
check that stops a pipeline whose filter kept nothing."""

from __future__ import annotations

from distillkit.errors import DistillkitError
from distillkit.records import Manifest
from distillkit.schemas.filter import FilterStats


def funnel_lines(stats: FilterStats) -> list[str]:
    """The funnel as plain lines (for an error message): step, records in -> out, the top rejection reasons."""
    lines = []
    for row in stats.funnel:
        top = sorted(stats.counts(row.step, "rejected").items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"  {row.step:<16} {row.in_:>8} -> {row.out:<8} {', '.join(f'{r} {c}' for r, c in top)}")
    if sel := stats.selection:
        rules = ", ".join(f"{r} {c['prompts']}" for r, c in sel["rules"].items() if c["prompts"])
        lines.append(f"  {'prompts':<16} {sel['prompts_in']:>8} -> {sel['prompts_out']:<8} {rules}")
    return lines


def check_kept(manifest: Manifest) -> None:
    """Stop (before training on nothing) when the filter kept no record, with the funnel and the keys to look at."""
    if manifest.counts.get("kept", 1) > 0:
        return
    stats = FilterStats.of(manifest)
    lines = funnel_lines(stats) if stats is not None else []
    sel = stats.selection if stats is not None else {}
    if sel and sel.get("prompts_in", 0) > 0:
        fix = ("the selection removed every prompt: widen filter.selection.min_pass_rate / max_pass_rate, raise "
               "filter.selection.bin_shares, or check the pass rates above (`distillkit report`)")
    else:
        fix = ("no trace passed the verifiers: check the top rejection reasons above and the verifiers' settings "
               "(filter.verifiers), or generate more samples (generate.sampling.n)")
    raise DistillkitError("filter kept 0 of {} records, nothing to train on; {}:\n{}".format(
        manifest.counts.get("input", 0), fix, "\n".join(lines)))


def funnel_table(manifest: Manifest | None):
    """A rich Table of the funnel (step, in, rejected, out, top reasons) and pass rate per source."""
    from rich.table import Table

    table = Table(title="filter funnel")
    for col, just in (("step", "left"), ("in", "right"), ("rejected", "right"), ("out", "right"),
                      ("rejection reasons", "left"), ("cannot judge", "left")):
        table.add_column(col, justify=just)
    stats = FilterStats.of(manifest)
    if stats is None:
        return table

    def listed(counts: dict) -> str:
        return ", ".join(f"{r} {c}" for r, c in sorted(counts.items(), key=lambda kv: -kv[1]))

    sel = stats.selection
    for row in stats.funnel:
        table.add_row(row.step, str(row.in_), str(row.rejected), str(row.out),
                      listed(stats.counts(row.step, "rejected")), listed(stats.counts(row.step, "cannot_judge")))
        if row.step == "selection" and sel:
            table.add_row("  prompts", str(sel["prompts_in"]), str(sel["prompts_in"] - sel["prompts_out"]),
                          str(sel["prompts_out"]), listed({r: c["prompts"] for r, c in sel["rules"].items() if c["prompts"]}), "")
    pr = stats.pass_rates
    if pr:
        table.add_row("prompts by teacher pass rate", str(pr["prompts"]), "", "",
                      ", ".join(f"{float(r):.0%}: {c}" for r, c in sorted(pr["histogram"].items(),
                                                                         key=lambda kv: float(kv[0]))),
                      f"never solved {pr['never']}, always {pr['always']}")
    for src, s in stats.sources.items():
        table.add_row(f"source {src or '-'}", str(s.records), "", str(s.kept),
                      f"pass rate {s.pass_rate:.1%} ({s.passed_verifiers}/{s.records}); "
                      f"prompts kept {s.prompts_kept}/{s.prompts}", "")
    return table
