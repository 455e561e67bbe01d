# The two commands of the README. Both create and reuse .venv (scripts/setup.sh).
.PHONY: quickstart test test-fast setup bench

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/distillkit run

test: setup
	.venv/bin/python -m pytest -q

# Everything except the slow real-model tests (SmolLM2, vLLM engines).
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"
