"""`python -m distillkit` is the `distillkit` command."""

from distillkit.cli import main

main()
