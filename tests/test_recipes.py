"""Every recipe under recipes/ validates (accelerate configs there are checked as YAML)."""

from pathlib import Path

import pytest
import yaml

from distillkit.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


def test_there_are_recipes():
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_validates(path):
    cfg = load_recipe(path)
    assert cfg.name and cfg.stages


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").rglob("accelerate/*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_is_yaml(path):
    data = yaml.safe_load(path.read_text())
    assert "distributed_type" in data
