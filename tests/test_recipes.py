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


def test_every_size_has_a_single_gpu_recipe_where_it_fits_and_multi_gpu_where_it_needs_it():
    """One folder per student size. A single-GPU QLoRA recipe wherever the student fits one GPU, a multi-GPU one
    wherever full fine-tuning needs sharding (the R1 sizes have both; Qwen3 0.6B/1.7B and Llama 3.2 fine-tune
    fully on one 80 GB GPU); each recipe without a sibling says why."""
    sizes = {p.parent.name: {q.stem for q in p.parent.glob("*.yaml")} for p in RECIPES
             if p.parent.name not in ("recipes", "lab")}  # lab: the CPU experiments of `distillkit compare`
    single_only = {"qwen3-0.6b", "qwen3-1.7b", "llama-3.2-1b", "llama-3.2-3b"}
    multi_only = {"qwen2.5-32b", "llama-3.3-70b-instruct"}
    assert set(sizes) == {"qwen2.5-math-1.5b", "qwen2.5-math-7b", "llama-3.1-8b", "qwen2.5-14b", "qwen2.5-32b",
                          "llama-3.3-70b-instruct", "qwen3-4b", "qwen3-8b"} | single_only
    assert {k for k, v in sizes.items() if "multi_gpu" in v} == set(sizes) - single_only
    assert {k for k, v in sizes.items() if "qlora_single_gpu" in v} == set(sizes) - multi_only
    for name in multi_only:  # and say why not
        assert "No single-GPU variant" in (ROOT / "recipes" / name / "multi_gpu.yaml").read_text()
    for name in single_only:
        assert "No multi-GPU variant" in (ROOT / "recipes" / name / "qlora_single_gpu.yaml").read_text()
    for path in RECIPES:  # every new-pair recipe names its teacher and says why it is the teacher
        if path.parent.name.startswith(("qwen3", "llama-3.2")):
            text = path.read_text()
            assert "# Teacher:" in text and "Why:" in text, path
