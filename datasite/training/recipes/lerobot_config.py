"""From a resolved recipe config to lerobot's: policy features, config objects and the
normalization statistics its processors hold."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datasite.training.recipes.registry import COMMON_KEYS

__all__ = ["lerobot_kwargs", "make_config", "policy_features", "quiet", "stats_tensors"]


def policy_features(
    features: Mapping[str, Mapping[str, Any]], cameras: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a LeRobot dataset schema (``meta/info.json`` ``features``) into policy inputs
    (float state/env vectors and cameras) and outputs (``action``), as lerobot ``PolicyFeature``s.

    Non-float vectors (ids, indices) are ignored. ``cameras`` restricts the image inputs (full
    keys or short names such as ``"top"``)."""
    from lerobot.configs.types import FeatureType
    from lerobot.utils.feature_utils import dataset_to_policy_features

    usable = {
        k: dict(ft)
        for k, ft in features.items()
        if ft.get("dtype") in ("image", "video") or str(ft.get("dtype", "")).startswith("float")
    }
    for ft in usable.values():
        ft["shape"] = tuple(int(d) for d in ft["shape"])
        if ft["dtype"] in ("image", "video") and not ft.get("names"):
            ft["names"] = ["height", "width", "channels"]
    pf = dataset_to_policy_features(usable)
    if "action" not in pf:
        raise ValueError(f"dataset schema has no float 'action' feature (keys: {sorted(features)})")
    image_keys = [k for k, f in pf.items() if f.type is FeatureType.VISUAL]
    if cameras is not None:
        chosen = {_match_camera(c, image_keys) for c in cameras}
        pf = {k: f for k, f in pf.items() if f.type is not FeatureType.VISUAL or k in chosen}
    inputs = {k: f for k, f in pf.items() if f.type is not FeatureType.ACTION}
    outputs = {k: f for k, f in pf.items() if f.type is FeatureType.ACTION}
    return inputs, outputs


def lerobot_kwargs(cfg: dict[str, Any], recipe_only: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The config keys lerobot takes: all but :data:`COMMON_KEYS` and the recipe's own keys."""
    return {k: v for k, v in cfg.items() if k not in COMMON_KEYS and k not in recipe_only}


def make_config(cls: type, recipe: str, **kwargs: Any) -> Any:
    """A lerobot policy config, validated against its features; errors name the recipe."""
    try:
        cfg = cls(**kwargs)
        cfg.validate_features()
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ValueError(f"recipe {recipe!r}: invalid configuration: {exc}") from exc
    return cfg


def stats_tensors(lcfg: Any, stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Tensor]]:
    """float32 tensors for the features the policy normalises; clear error when missing."""
    from lerobot.configs.types import NormalizationMode

    need = {
        NormalizationMode.MEAN_STD: ("mean", "std"),
        NormalizationMode.MIN_MAX: ("min", "max"),
        NormalizationMode.QUANTILES: ("q01", "q99"),
        NormalizationMode.QUANTILE10: ("q10", "q90"),
    }
    out: dict[str, dict[str, Tensor]] = {}
    feats = {**lcfg.input_features, **lcfg.output_features}
    for key, ft in feats.items():
        mode = lcfg.normalization_mapping.get(ft.type.value, NormalizationMode.IDENTITY)
        if mode is NormalizationMode.IDENTITY:
            continue
        have = stats.get(key) or {}
        missing = [s for s in need[mode] if s not in have]
        if missing:
            raise ValueError(
                f"normalization stats for {key!r} lack {missing} (mode {mode.value}); "
                f"stats given for {sorted(stats)}"
            )
        out[key] = {}
        for name, value in have.items():
            t = torch.as_tensor(np.asarray(value, dtype=np.float32))
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"normalization stats {key}.{name} contain NaN or inf")
            out[key][name] = t
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence lerobot's progress prints while building SmolVLA."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def _match_camera(name: str, image_keys: list[str]) -> str:
    for key in image_keys:
        if name in (key, key.rsplit(".", 1)[-1]):
            return key
    raise ValueError(f"unknown camera {name!r}; the dataset has {image_keys}")
