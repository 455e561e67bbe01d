"""Seeded fuzz of the CLI's bad-input handling: a user mistake prints one message and exits 2, never a traceback.

The cases come from `random.Random(SEED)` (set DISTILLKIT_FUZZ_SEED to explore other seeds) and run in-process
through `distillkit.cli.main`:

  - overrides on keys of the recipe schema (walked from `RecipeConfig`, so new keys are fuzzed too): wrong types,
    numbers outside their bounds, typos of keys at every depth, no `=`, malformed YAML values, a section replaced
    by a scalar, list indices out of range, several mistakes at once;
  - recipe files: shipped recipes with a key retyped, renamed or deleted; empty, list, scalar, invalid YAML,
    binary, UTF-16, gzip, self-referencing and too deeply nested files; a missing path, a directory;
  - combinations the config's cross-field validators reject, and missing paths that `validate` checks
    (evaluate.include_path, evaluate.tasks);
  - command-line usage mistakes: an unknown command or option, an option without its value.

Every case runs through `validate`; a sample of those that fail while the recipe loads also runs through
`preflight` and `run`, with the stage work patched to fail the test if it were ever reached. Valid controls must
exit 0, so a fuzz that rejects everything fails.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import os
import random
import re
import signal
import string
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from distillkit.cli import main
from distillkit.config import BUILTIN_RECIPES, RecipeConfig, StrictModel

SEED = int(os.environ.get("DISTILLKIT_FUZZ_SEED", "20250611"))
REPO = Path(__file__).resolve().parents[2]
QUICKSTART = BUILTIN_RECIPES / "quickstart.yaml"
SHIPPED = sorted(p for p in (REPO / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate")
QUICK = yaml.safe_load(QUICKSTART.read_text())

# Values that PyYAML cannot parse: the override keeps them as raw strings, which no non-string key accepts.
MALFORMED_YAML = ["[1,", "{a:", "[", "{", "'unterminated", '"half', "*nope", "[1, {a: ]", "a: b: c", "{a: 1", "[[]",
                  "!!python/object:os.system"]


# ----------------------------------------------------------------------------------------- the schema


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of the recipe schema: its path (str keys, int list indices), kind and bounds or sub-model."""

    path: tuple
    kind: str  # int float bool str literal list literal_list model_list dict model union
    info: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)
    default: Any = dataclasses.field(default=None, hash=False, compare=False)


def _members(annotation) -> tuple:
    return get_args(annotation) if get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)


def _classify(annotation, metadata) -> tuple[str, dict] | None:
    members = [m for m in _members(annotation) if m is not type(None)]
    if len(members) > 1:
        return "union", {}
    (m,), meta = members, list(metadata)
    if get_origin(m) is typing.Annotated:
        meta += list(m.__metadata__)
        m = get_args(m)[0]
    bounds = {b: getattr(x, b) for x in meta for b in ("gt", "ge", "lt", "le") if getattr(x, b, None) is not None}
    origin = get_origin(m)
    if origin is Literal:
        return "literal", {"choices": get_args(m)}
    if origin is list:
        (item,) = get_args(m)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "model_list", {"model": item}
        return ("literal_list" if get_origin(item) is Literal else "list"), {}
    if origin is dict:
        return "dict", {}
    if isinstance(m, type) and issubclass(m, BaseModel):
        return "model", {"model": m}
    simple = {bool: "bool", int: "int", float: "float", str: "str"}.get(m)
    return (simple, bounds) if simple else None


def _schema_keys(model: type[BaseModel], prefix: tuple = (), data: Any = None) -> list[Key]:
    """Every classifiable key under `model`; into a list of models only where `data` (the quickstart) has an item."""
    keys = []
    for name, field in model.model_fields.items():
        classified = _classify(field.annotation, field.metadata)
        if classified is None:
            continue
        kind, info = classified
        path = prefix + (name,)
        keys.append(Key(path, kind, info, field.default))
        sub = data.get(name) if isinstance(data, dict) else None
        if kind == "model":
            keys += _schema_keys(info["model"], path, sub)
        elif kind == "model_list" and isinstance(sub, list) and sub and isinstance(sub[0], dict):
            keys += _schema_keys(info["model"], path + (0,), sub[0])
    return keys


KEYS = _schema_keys(RecipeConfig, (), QUICK)
VALUE_KEYS = [k for k in KEYS if k.kind != "model"]
NON_STR_KEYS = [k for k in KEYS if k.kind not in ("str", "union")]
SECTIONS = [k for k in KEYS if k.kind == "model"]


def _strict_models() -> dict[tuple, type[StrictModel]]:
    """Dict paths whose keys are checked (StrictModel: unknown keys are errors), the root included."""
    out = {(): RecipeConfig}
    for k in KEYS:
        if k.kind == "model" and issubclass(k.info["model"], StrictModel):
            out[k.path] = k.info["model"]
    return out


STRICT = _strict_models()


def _model_at(path: tuple) -> type[BaseModel] | None:
    """The model of the mapping at `path` in a recipe (list indices included), or None (a free-form value)."""
    model: type[BaseModel] = RecipeConfig
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        classified = _classify(field.annotation, field.metadata) if field else None
        if classified is None or classified[0] not in ("model", "model_list"):
            return None
        model = classified[1]["model"]
    return model


# ----------------------------------------------------------------------------------------- values and keys


def _shown(path: tuple) -> str:
    """A key path as distillkit's messages write it: train.lora.r, filter.verifiers[0].kind."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _yaml(value: Any) -> str:
    """The override text of `value` (flow YAML, one line where possible); checked to read back as `value`."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    text = text.removesuffix("...").strip()
    back = yaml.safe_load(text)
    assert back == value or (isinstance(value, float) and math.isnan(value) and math.isnan(back)), (value, text)
    return text


def _out_of_bounds(bounds: dict, step: float) -> list:
    out = []
    if "gt" in bounds:
        out += [bounds["gt"], bounds["gt"] - step]
    if "ge" in bounds:
        out.append(bounds["ge"] - step)
    if "lt" in bounds:
        out.append(bounds["lt"])
    if "le" in bounds:
        out.append(bounds["le"] + step)
    return out


def bad_values(key: Key) -> list:
    """Values that no annotation of `key` accepts (pydantic's lax mode: "3" is an int, 1 a bool, so neither is here)."""
    kind, info = key.kind, key.info
    if kind == "int":
        return ["abc", [1], {"a": 1}, 2.5, *_out_of_bounds(info, 1)]
    if kind == "float":
        return ["abc", [0.5], {"a": 1}, *_out_of_bounds(info, 0.5), *([float("nan")] if info else [])]
    if kind == "bool":
        return ["maybe", 2, [True], {"a": 1}]
    if kind == "str":
        return [3, 2.5, True, [1], {"a": 1}]
    if kind == "literal":
        return [f"not_{info['choices'][0]}", 7, [info["choices"][0]]]
    if kind == "literal_list":
        return [{"a": 1}, 3, "text", ["no_such_choice"]]
    if kind == "list":
        return [{"a": 1}, 3, "text", [[1]]]
    if kind == "model_list":
        return [{"a": 1}, 3, "text", [3]]
    if kind in ("dict", "model"):
        return [3, "text", [1, 2], True]
    if kind == "union":
        return [{"a": 1}, [{"a": 1}]]
    raise AssertionError(kind)


def typo(rng: random.Random, name: str, taken: set[str]) -> str | None:
    """A near miss of `name` that is no key (nor renamed key) at its level, or None."""
    ops = [lambda s, i: s[:i] + s[i + 1:], lambda s, i: s[:i] + s[i] + s[i:], lambda s, i: s + "s",
           lambda s, i: s[:i] + s[i + 1:i + 2] + s[i:i + 1] + s[i + 2:], lambda s, i: s.replace("_", "-", 1),
           lambda s, i: s.replace("_", "", 1), lambda s, i: s[:1].upper() + s[1:],
           lambda s, i: s[:i] + rng.choice(string.ascii_lowercase) + s[i + 1:]]
    for _ in range(20):
        cand = rng.choice(ops)(name, rng.randrange(len(name)))
        if cand and cand not in taken and re.fullmatch(r"[A-Za-z_][\w-]*", cand):
            return cand
    return None


def _taken(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields) | set(getattr(model, "renamed", {}))


# ----------------------------------------------------------------------------------------- recipe data edits


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _leaves(data: dict, model: type[BaseModel], path: tuple = ()):
    """(path, Key) of every key a recipe sets that the schema classifies, sections included."""
    for name, value in data.items():
        field = model.model_fields.get(name)
        classified = _classify(field.annotation, field.metadata) if field else None
        if classified is None:
            continue
        kind, info = classified
        p = path + (name,)
        yield p, Key(p, kind, info)
        if kind == "model" and isinstance(value, dict):
            yield from _leaves(value, info["model"], p)
        elif kind == "model_list" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _leaves(item, info["model"], p + (i,))


def _strict_key_paths(data: dict, path: tuple = ()):
    """Paths of keys a recipe sets inside StrictModel mappings (where a renamed key is an error)."""
    model = _model_at(path)
    if not (isinstance(model, type) and issubclass(model, StrictModel)):
        return
    for name, value in data.items():
        yield path + (name,)
        if isinstance(value, dict):
            yield from _strict_key_paths(value, path + (name,))


def _renamed(data: dict, path: tuple, new: str) -> None:
    parent = _get(data, path[:-1])
    items = [(new if k == path[-1] else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)


# ----------------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    id: str
    argv: list[str]  # after `distillkit`; "{tmp}" is replaced with the test's tmp_path
    expect: tuple[str, ...] = ()  # text the one message must contain
    files: dict[str, bytes | None] = dataclasses.field(default_factory=dict)  # name -> bytes (None: a folder)
    at_load: bool = True  # fails while the recipe loads: safe to run through preflight and run as well


def _build_cases(seed: int) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []

    def add(category: str, argv: list[str], expect=(), files=None, at_load=True, hint: str = "") -> None:
        hint = re.sub(r"[^\w.-]+", "_", hint)[:40]
        cases.append(Case(f"{category}-{len(cases):03d}" + (f"-{hint}" if hint else ""), argv, tuple(expect),
                          files or {}, at_load))

    def validate(*args: str) -> list[str]:
        return ["validate", "quickstart", *args]

    # Wrong types and out-of-range numbers, one key at a time.
    for _ in range(110):
        key = rng.choice(VALUE_KEYS)
        value = rng.choice(bad_values(key))
        add("type", validate(f"{_dotted(key.path)}={_yaml(value)}"), [_shown(key.path)], hint=_dotted(key.path))

    # Several mistakes at once, after valid overrides: every one is reported.
    fine = ["train.lora.r=8", "generate.sampling.n=2", "name=fuzzed", "seed=7", "generate.shard_size=16"]
    for _ in range(25):
        keys = rng.sample([k for k in VALUE_KEYS if k.kind != "model_list"], rng.randint(2, 3))
        if any(a.path[:len(b.path)] == b.path for a in keys for b in keys if a is not b):
            continue
        args = rng.sample(fine, rng.randint(0, 2)) + [f"{_dotted(k.path)}={_yaml(rng.choice(bad_values(k)))}"
                                                      for k in keys]
        add("multi", validate(*args), [_shown(k.path) for k in keys])

    # Unknown keys: typos of real keys at every depth, sometimes with a real key below the typo.
    strict_keys = [(parent, name) for parent, model in STRICT.items() for name in model.model_fields]
    roots = [(parent, name) for parent, name in strict_keys if parent == ()]
    for i in range(50):
        parent, name = rng.choice(roots if i < 8 else strict_keys)
        wrong = typo(rng, name, _taken(STRICT[parent]))
        if wrong is None:
            continue
        sub = STRICT.get(parent + (name,))
        below = (rng.choice(list(sub.model_fields)),) if sub is not None and rng.random() < 0.5 else ()
        arg = f"{_dotted(parent + (wrong,) + below)}={rng.choice(['1', 'true', 'x', '[1, 2]', '{a: 1}'])}"
        add("typo", validate(arg), ["unknown key", _shown(parent + (wrong,))], hint=wrong)

    # Overrides without `=`: after the recipe they are refused; first, they are taken for a recipe name.
    for i in range(12):
        key = _dotted(rng.choice(VALUE_KEYS).path)
        form = rng.choice([key, f"{key}:1", f"{key} 1", f"{key}=="[:-2]])
        if i < 3:
            add("noeq", ["validate", form, "seed=1"], ["not found"], hint=form)
        else:
            add("noeq", validate(*rng.sample(fine, rng.randint(0, 1)), form), ["expected KEY=VALUE"], hint=form)
    add("noeq", validate("train.lora.r", "32"), ["expected KEY=VALUE"], hint="space-separated")

    # Malformed YAML values where the key takes no string.
    for _ in range(30):
        key = rng.choice(NON_STR_KEYS)
        add("yamlval", validate(f"{_dotted(key.path)}={rng.choice(MALFORMED_YAML)}"), [_shown(key.path)],
            hint=_dotted(key.path))

    # A section replaced by a scalar or a list.
    for _ in range(20):
        key = rng.choice(SECTIONS)
        value = rng.choice([3, "text", [1, 2], True, 0.5])
        add("scalar", validate(f"{_dotted(key.path)}={_yaml(value)}"), [_shown(key.path)], hint=_dotted(key.path))

    # List indices out of range, or a scalar item indexed further.
    for path in ("filter.verifiers", "generate.sampling.stop", "train.student.keep_layers", "evaluate.models"):
        n = len(_get(QUICK, tuple(path.split("."))))
        add("index", validate(f"{path}.{n + rng.randint(1, 50)}.kind=math"), ["out of range"], hint=path)
        add("index", validate(f"{path}.{n + rng.randint(1, 50)}=x"), ["out of range"], hint=path)
    add("index", validate("filter.verifiers.first.kind=math"), ["out of range"])
    add("index", validate("generate.sampling.stop.0.x=1"), ["generate.sampling.stop[0]"])
    add("index", validate("train.student.keep_layers.3.0=1"), ["train.student.keep_layers"])
    add("yamlval", validate("train.lora.r=" + "[" * 3000 + "]" * 3000), ["train.lora.r"], hint="deep")

    # Combinations the cross-field validators reject.
    combos = [
        (["generate.prompts.hub_dataset=org/data"], "set only one of path, hub_dataset, builtin"),
        (["generate.prompts.path=prompts.jsonl"], "set only one of path, hub_dataset, builtin"),
        (["generate.prompts.template=Solve this."], "template must contain {problem}"),
        (['generate.sampling.stop=[""]'], "empty stop string"),
        (["generate.sampling.temperature=0"], "temperature=0 (greedy) with n=4"),
        (["generate.prescreen.enabled=true", "generate.prescreen.temperature=0"], "samples=4 gives identical"),
        (["generate.prescreen.enabled=true", "filter.verifiers=[{kind: truncation}, {kind: length}]"],
         "generate.prescreen judges"),
        (["filter.decontaminate.benchmarks=[{split: test}]"], "set exactly one of `path`"),
        (["filter.decontaminate.benchmarks=[{path: b.txt, hub_dataset: org/b}]"], "set exactly one of `path`"),
        (["filter.selection.min_pass_rate=0.8", "filter.selection.max_pass_rate=0.5"], "keeps no prompt"),
        (["filter.selection.bins=[0, 0.5, 1]"], "set both `bins`"),
        (["filter.selection.bin_shares=[1, 1]"], "set both `bins`"),
        (["filter.selection.bins=[0, 0.7, 0.5, 1]", "filter.selection.bin_shares=[1, 1, 1]"], "rise strictly"),
        (["filter.selection.bins=[0.1, 1]", "filter.selection.bin_shares=[1]"], "rise strictly"),
        (["filter.selection.bins=[0, 0.5, 1]", "filter.selection.bin_shares=[1]"], "one share per bin"),
        (["filter.selection.bins=[0, 0.5, 1]", "filter.selection.bin_shares=[1, 1.5]"], "fraction in [0, 1]"),
        (["filter.selection.bins=[0, 0.5, 1]", "filter.selection.bin_shares=[0, 0]"], "keep no prompt inside"),
        (["filter.executor.kind=slurm"], "filter.executor.slurm.partition"),
        (["filter.executor.kind=slurm", "filter.executor.slurm={partition: cpu}"], "filter.executor.slurm.time"),
        (["filter.verifiers.0.kind=no_such_verifier"], "unknown verifier 'no_such_verifier'"),
        (["filter.verifiers.1.fallbacks=3"], "bad parameters for verifier 'math'"),
        (["filter.verifiers.0.on_cannot_judge=maybe"], "filter.verifiers[0].on_cannot_judge"),
        (["train.student.rope_theta=300000"], "max_position_embeddings"),
        (["train.student.rope_scaling={rope_type: yarn, factor: 4.0}"], "max_position_embeddings"),
        (["train.kd.cross_tokenizer=true", "train.kd.teacher_probs=live"], "kd.cross_tokenizer maps stored"),
        (["train.kd.alpha=1.0"], "lower kd.alpha or disable kd"),
        (["train.kd.teacher_probs=served"], "set on_policy.enabled: true"),
        (["train.kd.teacher_probs=served", "train.on_policy.enabled=true", "train.on_policy.lmbda=0.5"],
         "set on_policy.enabled: true"),
        (["train.mixture_size=100"], "mixture_size sizes a mixture"),
        (["train.sources=[{path: 'stage:filter'}]"], "set exactly one of `weight`"),
        (["train.sources=[{path: 'stage:filter', weight: 1, count: 3}]"], "set exactly one of `weight`"),
        (["train.sources=[{path: 'stage:score', weight: 1}]"], "names no stage with records"),
        (["train.sources=[{path: 'stage:filter', weight: 1, kind: non_reasoning}]"], "use kind: reasoning"),
        (["train.sources=[{path: 'stage:filter', weight: 1, columns: {messages: m}}]"], "remove `columns`"),
        (["train.sources=[{path: data/chat.jsonl, weight: 1, split: test}]"], "apply to Hub datasets only"),
        (["train.sources=[{path: org/chat, weight: 1, reasoning_format: none}]"], "kind: non_reasoning only"),
        (["train.sources=[{path: org/chat, weight: 1, columns: {prompt: p}}]"], "set both `prompt` and `response`"),
        (["train.sources=[{path: org/chat, weight: 1, columns: {messages: m, prompt: p, response: r}}]"],
         "not both"),
        (["train.sources=[{path: 'stage:filter', weight: 1}, {path: 'stage:filter', weight: 1}]"], "repeat"),
        (["train.sources=[{path: 'stage:filter', weight: 0}]"], "sum to 0"),
        (["train.mixture_size=5", "train.sources=[{path: 'stage:filter', count: 10}, {path: org/c, weight: 1}]"],
         "more than train.mixture_size=5"),
        (["train.mixture_size=5", "train.sources=[{path: 'stage:filter', count: 3}]"], "cannot be met"),
        (["train.sources=[{path: 'stage:filter', count: 0}]"], "every count is 0"),
        (["score.soft_labels=sampled"], "set score.teacher.backend: transformers"),
        (["stages=[generate, filtre]"], "stages[1]"),
        (["output_dir=runs/{nme}"], "only {name} may appear in braces"),
        (["output_dir=runs/{name}-{"], "only {name} may appear in braces"),
        (["output_dir=runs/{name[99]}"], "only {name} may appear in braces"),
        (["train.out_dir=runs/x"], "train.out_dir: unknown key"),
        (["out_dir=runs/x"], "out_dir: this key was renamed; use `output_dir`"),
        (["train.lora_r=8"], "use `train.lora.r` instead"),
        (["generate.samples_per_prompt=8"], "use `generate.sampling.n` instead"),
    ]
    for args, expect in combos:
        add("combo", validate(*args), [expect], hint=args[-1].split("=")[0])

    # Paths that validate checks (the evaluation tasks: before any stage runs). A prompts file, an accelerate
    # config or a mixture file that does not exist is found by the stage that reads it, not by validate.
    add("missing", validate("evaluate.include_path={tmp}/no_such_tasks"), ["evaluate.include_path"], at_load=False)
    add("missing", validate("evaluate.include_path={tmp}/tasks.txt"), ["evaluate.include_path"],
        {"tasks.txt": b"not a folder\n"}, at_load=False)
    add("missing", validate("evaluate.tasks=[distillkit_arihtm]"), ["'distillkit_arihtm' is not a task"],
        at_load=False)
    for recipe in ("{tmp}/nope.yaml", "no/such/dir/recipe.yaml", "quickstartt", "quickstart.yml", "QUICKSTART"):
        add("missing", ["validate", recipe], ["not found"], hint=recipe)
    add("missing", ["validate", "{tmp}/folder"], ["cannot read recipe"], {"folder": None})
    add("missing", ["validate", "{tmp}/folder.yaml", "seed=1"], ["cannot read recipe"], {"folder.yaml": None})

    # Shipped recipes edited: a key retyped, renamed or deleted.
    for src in [QUICKSTART, *SHIPPED]:
        data = yaml.safe_load(src.read_text())
        stem = f"{src.parent.name}-{src.stem}"
        leaves = list(_leaves(data, RecipeConfig))
        for j in range(2):
            path, key = rng.choice(leaves)
            edited = yaml.safe_load(src.read_text())
            _get(edited, path[:-1])[path[-1]] = rng.choice(bad_values(key))
            name = f"{stem}-retype{j}.yaml"
            add("retype", ["validate", f"{{tmp}}/{name}"], [_shown(path)],
                {name: yaml.safe_dump(edited, sort_keys=False).encode()}, hint=f"{stem}-{_dotted(path)}")
        renamable = list(_strict_key_paths(data))
        for j in range(2):
            path = rng.choice(renamable)
            wrong = typo(rng, path[-1], _taken(_model_at(path[:-1])))
            if wrong is None:
                continue
            edited = yaml.safe_load(src.read_text())
            _renamed(edited, path, wrong)
            name = f"{stem}-rename{j}.yaml"
            add("rename", ["validate", f"{{tmp}}/{name}"], ["unknown key", _shown(path[:-1] + (wrong,))],
                {name: yaml.safe_dump(edited, sort_keys=False).encode()}, hint=f"{stem}-{wrong}")
        deletions = []
        verifiers = data.get("filter", {}).get("verifiers") or []
        if verifiers:
            i = rng.randrange(len(verifiers))
            deletions.append((lambda d, i=i: _get(d, ("filter", "verifiers", i)).pop("kind"),
                              f"filter.verifiers[{i}].kind: required key is missing"))
        student = data.get("train", {}).get("student", {})
        if "max_position_embeddings" in student and ("rope_theta" in student or "rope_scaling" in student):
            deletions.append((lambda d: d["train"]["student"].pop("max_position_embeddings"),
                              "also set train.student.max_position_embeddings"))
        benchmarks = data.get("filter", {}).get("decontaminate", {}).get("benchmarks") or []
        if benchmarks:
            i = rng.randrange(len(benchmarks))
            source = "path" if "path" in benchmarks[i] else "hub_dataset"
            deletions.append((lambda d, i=i, s=source: d["filter"]["decontaminate"]["benchmarks"][i].pop(s),
                              "set exactly one of `path`"))
        if data.get("generate", {}).get("prescreen", {}).get("enabled"):
            deletions.append((lambda d: d["filter"].__setitem__("verifiers", [
                v for v in d["filter"]["verifiers"] if v["kind"] not in ("math", "code", "judge")]),
                "generate.prescreen judges"))
        for j, (delete, expect) in enumerate(rng.sample(deletions, min(2, len(deletions)))):
            edited = yaml.safe_load(src.read_text())
            delete(edited)
            name = f"{stem}-delete{j}.yaml"
            add("delete", ["validate", f"{{tmp}}/{name}"], [expect],
                {name: yaml.safe_dump(edited, sort_keys=False).encode()}, hint=stem)

    # Files that are no recipe at all.
    quick_text = QUICKSTART.read_text()
    junk = {
        "empty.yaml": (b"", "the recipe is empty"),
        "comments.yaml": (b"# nothing but a comment\n\n", "the recipe is empty"),
        "list.yaml": (b"- name: x\n- seed: 1\n", "expected a mapping"),
        "int.yaml": (b"42\n", "expected a mapping"),
        "str.yaml": (b"quickstart\n", "expected a mapping"),
        "bool.yaml": (b"true\n", "expected a mapping"),
        "false.yaml": (b"false\n", "expected a mapping"),
        "zero.yaml": (b"0\n", "expected a mapping"),
        "empty-list.yaml": (b"[]\n", "expected a mapping"),
        "empty-str.yaml": (b"''\n", "expected a mapping"),
        "unclosed.yaml": (b"name: x\ntrain: [\n", "invalid YAML"),
        "tabs.yaml": (b"train:\n\tmethod: full\n", "invalid YAML"),
        "indent.yaml": (b"train:\n    method: full\n  lora: {r: 8}\n", "invalid YAML"),
        "quote.yaml": (b"name: 'unterminated\nseed: 1\n", "invalid YAML"),
        "colons.yaml": (b"name: a: b\n", "invalid YAML"),
        "alias.yaml": (b"name: *nowhere\n", "invalid YAML"),
        "python-tag.yaml": (b"name: !!python/object/apply:os.system [echo hi]\n", "invalid YAML"),
        "nul.yaml": (b"name: x\x00\n", "invalid YAML"),
        "utf16.yaml": (quick_text.encode("utf-16"), "not a text file"),
        "gzip.yaml": (gzip.compress(quick_text.encode(), mtime=0), "not a text file"),
        "png.yaml": (b"\x89PNG\r\n\x1a\n" + rng.randbytes(200), "not a text file"),
        "intkeys.yaml": (b"1: 2\ntrain: {lora: {3: 4}}\n", "Keys should be strings"),
        "nullkey.yaml": (b"~: 1\n", "Keys should be strings"),
        "cycle.yaml": (b"filter:\n  verifiers: &v [*v]\n", "contains itself"),
        "cycle-dict.yaml": (b"generate:\n  teacher:\n    vllm:\n      engine_kwargs: &e {a: *e}\n", "contains itself"),
        "cycle-sources.yaml": (b"train:\n  sources: &s [{path: x, weight: 1}, *s]\n", "contains itself"),
        "deep.yaml": (b"name: " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested too deeply"),
    }
    for i in range(4):
        junk[f"garbage{i}.yaml"] = (bytes([0x80 + rng.randrange(0x40)]) + rng.randbytes(rng.randint(16, 4096)),
                                    "not a text file")
    for name, (content, expect) in junk.items():
        add("junk", ["validate", f"{{tmp}}/{name}"], [expect], {name: content}, hint=name)

    # Command-line usage mistakes.
    usage = [
        (["valdate", "quickstart"], "No such command"), (["runn"], "No such command"),
        (["preflite", "quickstart"], "No such command"), (["generat"], "No such command"),
        (["validate", "--bogus"], "No such option"), (["validate", "quickstart", "--overwrite"], "No such option"),
        (["validate", "quickstart", "-x=1"], "No such option"), (["run", "--form", "train"], "No such option"),
        (["preflight", "quickstart", "--verbose"], "No such option"), (["run", "--from"], "requires an argument"),
        (["plan", "--gpu-memory"], "requires an argument"),
        (["plan", "quickstart", "--gpu-memory", "lots"], "Invalid value for '--gpu-memory'"),
        (["inspect"], "Missing argument"), (["report"], "Missing argument"),
        (["inspect", "a", "b"], "unexpected extra argument"),
    ]
    for argv, expect in usage:
        add("usage", argv, [expect], hint=" ".join(argv))
    return cases


def _build_controls() -> list[Case]:
    """Valid inputs: each must exit 0, so a fuzz whose cases fail for a wrong reason cannot pass unnoticed."""
    rng = random.Random(SEED + 1)
    controls = [Case("no-recipe", ["validate"]), Case("builtin-name", ["validate", "quickstart"]),
                Case("builtin-path", ["validate", str(QUICKSTART)])]
    controls += [Case(f"shipped-{p.parent.name}-{p.stem}", ["validate", str(p)]) for p in SHIPPED]
    controls += [
        Case("overrides", ["validate", "quickstart", "train.lora.r=32", "generate.sampling.n=2", "name=fuzz-ok"]),
        Case("output-dir", ["validate", "quickstart", "output_dir=runs/{name}-{{x}}"]),
        Case("append-stop", ["validate", "quickstart", "generate.sampling.stop.1=END"]),
        Case("verifier-kind", ["validate", "quickstart", "filter.verifiers.3.kind=repetition"]),
        Case("shared-alias", ["validate", "{tmp}/alias.yaml"], files={"alias.yaml": (
            b"stages: [generate, filter]\ngenerate:\n  teacher:\n    openai: &o {max_retries: 3}\n"
            b"score:\n  teacher:\n    openai: *o\n")}),
    ]
    plain = [k for k in VALUE_KEYS if k.default not in (None, PydanticUndefined)]
    for key in rng.sample(plain, 20):
        controls.append(Case(f"default-{_dotted(key.path)}",
                             ["validate", "quickstart", f"{_dotted(key.path)}={_yaml(key.default)}"]))
    return controls


CASES = _build_cases(SEED)
CONTROLS = _build_controls()
LOAD_SAMPLE = random.Random(SEED + 2).sample([c for c in CASES if c.at_load and c.argv[0] == "validate"], 24)


# ----------------------------------------------------------------------------------------- running


@pytest.fixture(scope="module", autouse=True)
def _restore_process_state():
    """`main` sets library environment defaults and a SIGTERM handler; `run` reconfigures logging: undo it all."""
    env = dict(os.environ)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    ours = logging.getLogger("distillkit").level
    sigterm = signal.getsignal(signal.SIGTERM)
    yield
    for name in set(os.environ) - set(env):
        del os.environ[name]
    os.environ.update(env)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("distillkit").setLevel(ours)
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture
def no_stage_work(monkeypatch):
    """`preflight` and `run` with a recipe that fails to load must stop before loading a model or running a stage."""
    import distillkit.pipeline
    import distillkit.preflight

    def reached(*args, **kwargs):
        raise pytest.fail.Exception("a rejected recipe reached preflight or the pipeline")

    monkeypatch.setattr(distillkit.pipeline, "run_pipeline", reached)
    monkeypatch.setattr(distillkit.preflight, "preflight", reached)


def _materialize(case: Case, tmp_path: Path) -> list[str]:
    for name, content in case.files.items():
        if content is None:
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(content)
    return [a.replace("{tmp}", str(tmp_path)) for a in case.argv]


def _cli(argv: list[str], capsys) -> tuple[int | None, str]:
    capsys.readouterr()
    code = None  # main always ends with sys.exit
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) or e.code is None else 1
        code = 0 if code is None else code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _assert_rejected(argv: list[str], case: Case, code: int | None, text: str) -> None:
    where = f"distillkit {' '.join(argv)}"
    assert "Traceback" not in text, f"{where}: a traceback\n{text}"
    assert code == 2, f"{where}: exit {code}, expected 2\n{text}"
    assert "internal error" not in text, f"{where}\n{text}"
    assert len(re.findall(r"^error:", text, re.I | re.M)) == 1, f"{where}: expected exactly one error message\n{text}"
    for part in case.expect:
        assert part in text, f"{where}: the message lacks {part!r}\n{text}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_rejects_with_one_message(case, tmp_path, capsys):
    argv = _materialize(case, tmp_path)
    code, text = _cli(argv, capsys)
    _assert_rejected(argv, case, code, text)
    assert "is valid" not in text


@pytest.mark.parametrize("command", ["preflight", "run"])
@pytest.mark.parametrize("case", LOAD_SAMPLE, ids=[c.id for c in LOAD_SAMPLE])
def test_preflight_and_run_reject_before_any_work(case, command, tmp_path, capsys, no_stage_work):
    argv = [command, *_materialize(case, tmp_path)[1:]]
    code, text = _cli(argv, capsys)
    _assert_rejected(argv, case, code, text)


@pytest.mark.parametrize("case", CONTROLS, ids=[c.id for c in CONTROLS])
def test_valid_controls_pass(case, tmp_path, capsys):
    argv = _materialize(case, tmp_path)
    code, text = _cli(argv, capsys)
    assert code == 0 and "is valid" in text, f"distillkit {' '.join(argv)}: exit {code}\n{text}"


def test_fuzz_covers_every_kind_of_mistake():
    """The generator keeps its breadth (a refactor that empties a category fails here, not silently)."""
    counts: dict[str, int] = {}
    for case in CASES:
        category = case.id.split("-")[0]
        counts[category] = counts.get(category, 0) + 1
    minimum = {"type": 100, "multi": 15, "typo": 40, "noeq": 10, "yamlval": 25, "scalar": 15, "index": 8,
               "combo": 45, "missing": 8, "retype": 20, "rename": 18, "delete": 15, "junk": 25, "usage": 12}
    assert {c: counts.get(c, 0) for c in minimum if counts.get(c, 0) < minimum[c]} == {}, counts
    assert len(CASES) >= 350, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    for value in MALFORMED_YAML:
        with pytest.raises(yaml.YAMLError):
            yaml.safe_load(value)
