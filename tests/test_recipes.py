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


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_fits_its_hardware(path):
    from distillkit.plan import plan_recipe

    plan = plan_recipe(load_recipe(path))
    assert plan.warnings == []
    assert plan.train is None or plan.train["total"] <= plan.gpu_memory_gib


def test_every_size_has_a_multi_gpu_recipe_and_single_gpu_where_it_fits():
    sizes = {p.parent.name: {q.stem for q in p.parent.glob("*.yaml")} for p in RECIPES
             if p.parent.name not in ("recipes", "lab")}  # lab: the CPU experiments of `distillkit compare`
    assert set(sizes) == {"qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.1-8b", "qwen2.5-14b", "qwen2.5-32b",
                          "llama-3.3-70b-instruct"}
    assert all("multi_gpu" in v for v in sizes.values())
    assert {k for k, v in sizes.items() if "qlora_single_gpu" in v} == {
        "qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.1-8b", "qwen2.5-14b"}
    for name in ("qwen2.5-32b", "llama-3.3-70b-instruct"):  # and say why not
        assert "No single-GPU variant" in (ROOT / "recipes" / name / "multi_gpu.yaml").read_text()
