"""Progress bars for long loops: rich bars on stderr that leave stdout and other writers alone."""

from __future__ import annotations


def progress_bar(*columns, transient: bool = False):
    """A rich `Progress` on stderr.

    stdout/stderr are not redirected through the live display: libraries write their own tqdm bars
    to stderr (transformers loading weights, vLLM), and redirecting those inside a Jupyter kernel
    recurses until Python's stack overflows.
    """
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(stderr=True), transient=transient,
                    redirect_stdout=False, redirect_stderr=False)
