"""A finding as terminal text, wrapped to the terminal's width."""

from __future__ import annotations

from distillkit.tokenizer_checks import Finding


SEVERITY_MARK = {"error": "error  ", "warning": "warning", "ok": "ok     "}


def format_finding(f: Finding, width: int = 80) -> str:
    """One finding as text for a terminal of `width` columns: "severity check (subject): message", wrapped
    under itself, then "fix: ..." indented the same way. Never a line longer than `width`."""
    import textwrap

    indent = " " * (len(SEVERITY_MARK["warning"]) + 1)
    head = f"{SEVERITY_MARK.get(f.severity, f.severity)} {f.check}" + (f" ({f.subject})" if f.subject else "")
    width = max(width, 40)
    lines = textwrap.wrap(f"{head}: {f.message}", width=width, subsequent_indent=indent,
                          break_long_words=True, break_on_hyphens=False)
    if f.fix:
        lines += textwrap.wrap(f"fix: {f.fix}", width=width, initial_indent=indent, subsequent_indent=indent + "     ",
                               break_long_words=True, break_on_hyphens=False)
    return "\n".join(lines)
