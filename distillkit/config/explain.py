"""How a recipe's mistakes are worded: renamed keys, "did you mean" for unknown ones, pydantic's errors as
`path=value: problem`, and a YAML value that contains itself."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel

from distillkit.config.base import StrictModel


_SCALAR = re.compile(r"^[A-Za-z_][\w-]*$")


def _fmt_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _submodel(annotation) -> type[StrictModel] | None:
    """The StrictModel class inside an annotation (Optional[X], list[X]), or None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found:
            return found
    return None


def _apply_renames(model: type[BaseModel], data: Any, loc: tuple, problems: list[str]) -> Any:
    """Report renamed keys (with their new name) and drop them, recursively, before validation."""
    if isinstance(data, list):
        return [_apply_renames(model, item, loc + (i,), problems) for i, item in enumerate(data)]
    if not isinstance(data, dict):
        return data
    renamed = getattr(model, "renamed", {})
    out = {}
    for key, value in data.items():
        if key in renamed:
            problems.append(f"{_fmt_path(loc + (key,))}: this key was renamed; use "
                            f"`{_fmt_path(loc + tuple(renamed[key].split('.')))}` instead")
            continue
        field = model.model_fields.get(key) if isinstance(key, str) else None
        sub = _submodel(field.annotation) if field else None
        out[key] = _apply_renames(sub, value, loc + (key,), problems) if sub else value
    return out


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at `loc` (for "did you mean")."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        sub = _submodel(field.annotation) if field else None
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(err: dict, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    path = _fmt_path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = _field_names(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean `{_fmt_path(loc[:-1] + (close[0],))}`?" if close else \
            f"valid keys here: {', '.join(valid)}"
        return f"{path}: unknown key; {hint}"
    if kind == "missing":
        return f"{path}: required key is missing; add it"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{path}={_short(err.get('input'))}: {msg}"


def _find_cycle(data: Any, loc: tuple = (), active: tuple = ()) -> tuple | None:
    """Where a value contains itself (YAML `&a [*a]`), or None; shared, non-cyclic aliases are fine."""
    if not isinstance(data, (dict, list)):
        return None
    if any(node is data for node in active):
        return loc
    for key, value in (data.items() if isinstance(data, dict) else enumerate(data)):
        found = _find_cycle(value, loc + (key,), active + (data,))
        if found is not None:
            return found
    return None
