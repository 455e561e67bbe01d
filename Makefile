# The two commands of the README. Both create and reuse .venv (scripts/setup.sh).
.PHONY: quickstart test test-fast setup bench lint-imports

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/distillkit run

test: setup
	.venv/bin/python -m pytest -q --durations=30

# Everything except the slow real-model tests (SmolLM2, vLLM engines).
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

# The layer contract of pyproject.toml alone (`make test` checks it too: tests/test_layering.py).
lint-imports: setup
	.venv/bin/lint-imports --no-cache
