"""Recipes by name: each recipe module registers a :class:`Recipe` (its config schema and
builder); :func:`resolve_config` validates a config against it and fills in the defaults.

Config schemas map each key to ``(type tag, default)``; the tags are int, float, bool, str,
ints (tuple of ints), opt_ints, opt_int, path, opt_path, strs (list of str) and opt_strs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "COMMON_KEYS",
    "DEFAULT_RECIPE",
    "RECIPES",
    "Builder",
    "Recipe",
    "known_recipes",
    "lookup",
    "register",
    "resolve_config",
]

DEFAULT_RECIPE = "act-small"
# keys every recipe takes; neither goes to lerobot
COMMON_KEYS: dict[str, tuple[str, Any]] = {"init_seed": ("int", 0), "cameras": ("opt_strs", None)}

Builder = Callable[..., Any]
"""``build(cfg, inputs, outputs, stats, device) -> PolicyBundle`` (cfg resolved, RNG seeded)."""


@dataclass(frozen=True)
class Recipe:
    """A named recipe: ``keys`` is its config schema, ``build`` its builder."""

    name: str
    policy_type: str
    keys: dict[str, tuple[str, Any]]
    description: str
    build: Builder


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> None:
    """Make ``recipe`` available by its name."""
    RECIPES[recipe.name] = recipe


def known_recipes() -> list[str]:
    """Names of the available recipes."""
    return sorted(RECIPES)


def lookup(name: str) -> Recipe:
    """The recipe called ``name`` (``ValueError`` naming the known ones otherwise)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(known_recipes())}")
    return RECIPES[name]


def resolve_config(recipe: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` for ``recipe`` and fill in defaults (raises ``ValueError``)."""
    spec = lookup(recipe)
    config = dict(config or {})
    unknown = sorted(set(config) - set(spec.keys))
    if unknown:
        raise ValueError(f"recipe {recipe!r}: unknown config key(s) {unknown}; allowed: {sorted(spec.keys)}")
    out: dict[str, Any] = {}
    for key, (tag, default) in spec.keys.items():
        out[key] = _check_value(recipe, key, tag, config[key]) if key in config else default
    return out


def _check_value(recipe: str, key: str, tag: str, value: Any) -> Any:
    def bad(expected: str) -> ValueError:
        return ValueError(f"recipe {recipe!r}: {key} must be {expected}, got {value!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if tag.startswith("opt_") and value is None:
        return None
    base = tag.removeprefix("opt_")
    if base == "int":
        if not is_int(value):
            raise bad("an integer")
        return value
    if base == "float":
        if not (is_int(value) or isinstance(value, float)) or not np.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if base == "ints":
        if not isinstance(value, list | tuple) or not value or not all(map(is_int, value)):
            raise bad("a non-empty list of integers")
        return tuple(value)
    if base == "strs":
        if not isinstance(value, list | tuple) or not value:
            raise bad("a non-empty list of strings")
        if not all(isinstance(v, str) for v in value):
            raise bad("a non-empty list of strings")
        return list(value)
    if base == "path":
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise bad("a folder path")
        return str(value)
    raise AssertionError(tag)
