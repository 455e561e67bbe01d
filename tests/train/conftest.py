"""Train-stage fixtures (helpers live in train_helpers.py, importable from the tests)."""

from __future__ import annotations

import pytest
from train_helpers import teacher_records


@pytest.fixture(scope="session")
def tiny_records(tiny_qwen2):
    return teacher_records(tiny_qwen2)
