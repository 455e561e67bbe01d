"""Stage 2: verify traces and keep the correct, readable ones; every rejection has a reason."""
