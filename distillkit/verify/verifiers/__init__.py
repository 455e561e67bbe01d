"""Verifiers: one small class per check, each returning a `Verdict` with a snake_case reason."""
