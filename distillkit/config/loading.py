"""Reading a recipe: a YAML file or a built-in name, `key=value` overrides, and validation that reports every
problem at once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distillkit.config.explain import _apply_renames, _explain, _find_cycle, _fmt_path
from distillkit.config.recipe import RecipeConfig
from distillkit.errors import ConfigError, DistillkitError


def validate_recipe(data: Any, source: str | None = None) -> RecipeConfig:
    """Validate a parsed recipe; raise ConfigError listing every problem (path, bad value, fix)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], source)
    cycle = _find_cycle(data)
    if cycle is not None:
        raise ConfigError([f"{_fmt_path(cycle)}: this value contains itself (a YAML alias *x inside its own "
                           "anchor &x); write the value out instead"], source)
    problems: list[str] = []
    data = _apply_renames(RecipeConfig, data, (), problems)
    try:
        cfg = RecipeConfig.model_validate(data)
    except ValidationError as e:
        problems += [_explain(err, RecipeConfig) for err in e.errors()]
        cfg = None
    if problems:
        raise ConfigError(problems, source)
    return cfg


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """"train.lora.r=32" -> (["train", "lora", "r"], 32); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError([f"override {text!r}: expected KEY=VALUE, e.g. train.lora.r=32"])
    key, _, raw = text.partition("=")
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    if not parts or any(p == "" for p in parts):
        raise ConfigError([f"override {text!r}: empty key segment"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):  # kept as text: validation names the key that takes no such string
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ConfigError([f"override {text!r}: index {part} is out of range"])
                if not isinstance(node[part], (dict, list)):  # a scalar item: replaced, as in a mapping below
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
                continue
            if not isinstance(node.get(part), (dict, list)):
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last > len(node):
                raise ConfigError([f"override {text!r}: index {last} is out of range"])
            node[last:last + 1] = [value]
        else:
            node[last] = value
    return data


BUILTIN_RECIPES = Path(__file__).parents[1] / "recipes"  # distillkit/recipes/


def resolve_recipe_path(recipe: str | os.PathLike | None) -> Path:
    """A recipe argument: a file path, or the name of a built-in recipe (default: quickstart)."""
    if recipe is None:
        return BUILTIN_RECIPES / "quickstart.yaml"
    path = Path(recipe)
    if path.exists():
        return path
    builtin = BUILTIN_RECIPES / f"{recipe}.yaml"
    if builtin.exists() and not path.suffix:
        return builtin
    raise DistillkitError(f"recipe {str(recipe)!r} not found: give a YAML file path, or one of the "
                          f"built-in recipes {[p.stem for p in sorted(BUILTIN_RECIPES.glob('*.yaml'))]}")


def load_recipe(recipe: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a recipe YAML (or a built-in name), apply `key=value` overrides, validate everything."""
    path = resolve_recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DistillkitError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise DistillkitError(f"{path}: cannot read recipe ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DistillkitError(f"{path}: not a text file (byte {e.object[e.start]:#04x} at offset {e.start} is not "
                              "UTF-8); a recipe is a YAML text file") from None
    except RecursionError:
        raise DistillkitError(f"{path}: YAML nested too deeply to read; a recipe is a few levels of keys") from None
    if data is None:  # an empty file (or comments only) is a mistake, not a request for every default
        raise DistillkitError(f"{path}: the recipe is empty (no keys); write its keys (e.g. copy "
                              f"{BUILTIN_RECIPES / 'quickstart.yaml'}), or give no RECIPE for the built-in quickstart")
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], str(path))
        data = apply_overrides(data, overrides)
    return validate_recipe(data, source=str(path))
