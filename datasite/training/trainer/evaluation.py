"""Held-out evaluation at a site, and the pieces training shares with it: the policy of a
code bundle or recipe, and the loss on a fixed batch (eval mode, fixed RNG, no gradient)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datasite.training.recipes import (
    DEFAULT_RECIPE,
    PolicyBundle,
    build_bundle,
    build_policy,
    delta_timestamps,
)
from datasite.training.runtime import cuda_indices, default_device, seeded
from datasite.training.trainer.frames import FrameSource, check_episodes, read_info
from datasite.training.weights import apply_weights

__all__ = ["build_for", "eval_loss", "evaluate"]


def evaluate(
    weights: Mapping[str, Tensor],
    recipe: str | None,
    recipe_config: Mapping[str, Any] | None,
    dataset_root: Path,
    episodes: list[int],
    norm_stats: Mapping[str, Mapping[str, Any]],
    frames: int = 32,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    code: Mapping[str, Any] | None = None,
) -> float:
    """Loss of ``weights`` on a seeded sample of ``frames`` frames from ``episodes`` only
    (held-out evaluation at a site; eval mode, fixed RNG, no gradient). ``code``: as in
    :func:`train_local`."""
    root = Path(dataset_root)
    dev = torch.device(device) if device is not None else default_device()
    info = read_info(root)
    bundle = build_for(recipe, recipe_config, code, info["features"], norm_stats, dev)
    apply_weights(bundle.policy, weights)
    source = FrameSource(
        root,
        check_episodes(episodes),
        delta_timestamps(bundle, info["features"], info["fps"]),
        bundle.preprocessor,
    )
    rows = source.random_rows(min(frames, source.num_frames), torch.Generator().manual_seed(seed))
    return eval_loss(bundle, source.batch(rows, train=False), seed)


def build_for(recipe, recipe_config, code, features, norm_stats, dev) -> PolicyBundle:
    """The policy of a code bundle, or of ``recipe`` + ``recipe_config``."""
    if code is None:
        return build_policy(recipe or DEFAULT_RECIPE, recipe_config, features, norm_stats, device=dev)
    if recipe is not None or recipe_config is not None:
        raise ValueError("give either code or recipe and recipe_config, not both")
    return build_bundle(code, features, norm_stats, device=dev)


@torch.no_grad()
def eval_loss(bundle: PolicyBundle, batch: dict[str, Any], seed: int) -> float:
    """Loss on the fixed evaluation batch, eval mode, fixed RNG (comparable before/after)."""
    was_training = bundle.policy.training
    bundle.policy.eval()
    try:
        dev = next(bundle.policy.parameters()).device
        with seeded(seed + 7919, cuda_indices(dev)):
            return float(bundle.loss(batch))
    finally:
        bundle.policy.train(was_training)
