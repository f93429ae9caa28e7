"""Building a study's policy: a recipe by name, or a module bundle on top of its base recipe;
and what the data side needs from a built policy (delta timestamps, synthetic batches)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from datasite.training import modules
from datasite.training.recipes.bundle import PolicyBundle
from datasite.training.recipes.lerobot_config import policy_features
from datasite.training.recipes.registry import DEFAULT_RECIPE, lookup, resolve_config
from datasite.training.runtime import default_device, hub_offline, seeded

__all__ = ["build_bundle", "build_policy", "delta_timestamps", "synthetic_batch"]


def build_policy(
    recipe: str,
    config: Mapping[str, Any] | None,
    features: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, Any]],
    device: str | torch.device | None = None,
) -> PolicyBundle:
    """Build ``recipe`` for a dataset schema and normalization ``stats``
    (``{feature: {"mean"|"std"|"min"|"max": array-like}}``, e.g. aggregated across sites).

    ``device`` defaults to CUDA when available. The policy is returned in train mode."""
    cfg = resolve_config(recipe or DEFAULT_RECIPE, config)
    spec = lookup(recipe or DEFAULT_RECIPE)
    dev = torch.device(device) if device is not None else default_device()
    hub_offline()
    inputs, outputs = policy_features(features, cfg["cameras"])
    with seeded(cfg["init_seed"], _cuda_devices()):
        bundle = spec.build(cfg, inputs, outputs, stats, dev)
    bundle.policy.to(dev).train()
    return bundle


def build_bundle(
    code: Mapping[str, Any],
    features: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, Any]],
    device: str | torch.device | None = None,
) -> PolicyBundle:
    """Build a study's code bundle (``CodeBundle.model_dump()``): a recipe, or a module's entry
    point applied to its base recipe (see :mod:`datasite.training.modules`).

    A module's source is executed here: call this only with a bundle whose approved SHA-256
    was just re-verified (the datasite's services do so)."""
    if hasattr(code, "model_dump"):
        code = code.model_dump()
    kind = code.get("kind", "recipe")
    if kind == "recipe":
        return build_policy(code.get("recipe") or DEFAULT_RECIPE, code.get("config"), features, stats, device)
    if kind != "module":
        raise ValueError(f"unknown code bundle kind {kind!r} (expected 'recipe' or 'module')")
    base_recipe = code.get("base_recipe") or DEFAULT_RECIPE
    entry = code.get("entry") or "build_policy"
    source = code.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError("a module bundle needs its Python source")
    base = build_policy(base_recipe, code.get("base_config"), features, stats, device)
    dev = next(base.policy.parameters()).device
    base_loss, base_vmap = base.loss_fn, base.vmap_loss
    with seeded(base.config["init_seed"], _cuda_devices()):
        fn = modules.load_entry(source, entry)
        out = modules.call_entry(fn, base, code.get("config") or {})
    if not isinstance(out, PolicyBundle):
        raise modules.ModuleCodeError(
            f"entry point {entry!r} must return a PolicyBundle, got {type(out).__name__}"
        )
    if not isinstance(out.policy, nn.Module) or not callable(out.loss_fn):
        raise modules.ModuleCodeError(
            f"entry point {entry!r} returned a bundle without a policy module or loss_fn"
        )
    if not hasattr(out.policy, "config"):
        raise modules.ModuleCodeError(f"entry point {entry!r}: the policy must keep its lerobot config")
    if not any(p.requires_grad for p in out.policy.parameters()):
        raise modules.ModuleCodeError(f"entry point {entry!r} left no trainable parameter")
    if out.loss_fn is not base_loss and out.vmap_loss is base_vmap:
        out.vmap_loss = None  # the base recipe's vmap loss is not the module's loss
    out.recipe = f"{base_recipe}+module"
    out.policy.to(dev).train()
    return out


def delta_timestamps(bundle: PolicyBundle, features: Mapping[str, Any], fps: float) -> dict | None:
    """Delta timestamps the policy needs from the dataset (lerobot's own resolution)."""
    from lerobot.datasets.factory import resolve_delta_timestamps

    meta = SimpleNamespace(features=dict(features), fps=fps)
    return resolve_delta_timestamps(bundle.lerobot_config, meta)


def synthetic_batch(
    bundle: PolicyBundle,
    features: Mapping[str, Mapping[str, Any]],
    batch_size: int,
    fps: float = 30,
    seed: int = 0,
) -> dict[str, Any]:
    """A random raw batch shaped like collated dataset items (windows included) for the
    policy's inputs and outputs, before preprocessing: for smoke tests and benchmarks."""
    deltas = delta_timestamps(bundle, features, fps) or {}
    g = torch.Generator().manual_seed(seed)
    cfg = bundle.lerobot_config
    batch: dict[str, Any] = {}
    for key, ft in {**cfg.input_features, **cfg.output_features}.items():
        n = len(deltas.get(key, []))
        lead = (batch_size, n) if n > 1 or (key == "action" and n) else (batch_size,)
        visual = len(ft.shape) == 3
        value = torch.rand(*lead, *ft.shape, generator=g)
        batch[key] = value if visual else (value - 0.5) * 60.0
        if n:
            batch[f"{key}_is_pad"] = torch.zeros(batch_size, n, dtype=torch.bool)
    batch["task"] = ["pick up the red cube and put it in the bin"] * batch_size
    return batch


def _cuda_devices() -> list[int]:
    """Every CUDA device: seeded initialisation leaves none of their RNG states disturbed."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
