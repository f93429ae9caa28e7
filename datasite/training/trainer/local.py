"""Local training at a datasite: one federated round's worth of steps on the site's own data.

``train_local`` builds the recipe's policy, loads the global weights, reads **only** the
episodes it is given (consent exclusion is enforced by loading the lerobot dataset restricted to
them and checked on every item read), trains ``plan.local_steps`` steps with the FedProx
proximal term and, when ``plan.dp``, DP-SGD with the episode as privacy unit (see
:mod:`datasite.training.dp`), and returns the update (trained minus global trainable weights).

Metrics (losses on a fixed evaluation batch, counts) are computed from private data without
noise: they stay at the site unless its data owner releases them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datasite.training import dp as dpmod
from datasite.training.recipes import delta_timestamps
from datasite.training.runtime import cuda_indices, default_device, seeded
from datasite.training.trainer.evaluation import build_for, eval_loss
from datasite.training.trainer.frames import FrameSource, check_episodes, read_info
from datasite.training.trainer.loops import run_dp, run_plain
from datasite.training.trainer.plan import LocalPlan
from datasite.training.weights import apply_weights, manifest, trainable_state
from privacy.accounting import Mechanism

__all__ = ["LocalResult", "train_local"]


@dataclass
class LocalResult:
    """``update`` = trained − global trainable weights (CPU, sorted names); ``mechanism`` is
    the DP applied (``None`` without DP); ``episodes_read`` every episode any item came from."""

    update: dict[str, Tensor]
    metrics: dict[str, Any]
    mechanism: Mechanism | None
    episodes_read: list[int]
    manifest: list[dict] = field(default_factory=list)


def train_local(
    global_weights: Mapping[str, Tensor] | None,
    recipe: str | None,
    recipe_config: Mapping[str, Any] | None,
    dataset_root: Path,
    episodes: list[int],
    plan: LocalPlan,
    norm_stats: Mapping[str, Mapping[str, Any]],
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
    norm_hook: dpmod.NormHook | None = None,
    code: Mapping[str, Any] | None = None,
) -> LocalResult:
    """Train ``recipe`` from ``global_weights`` on ``episodes`` of the dataset at
    ``dataset_root`` for ``plan.local_steps`` steps and return the update.

    ``code`` (a ``CodeBundle.model_dump()``: a recipe or a module bundle) replaces ``recipe``
    and ``recipe_config`` (then both ``None``); a module's source is executed, so pass only
    a bundle whose approved hash was re-verified.
    ``global_weights=None`` starts from the recipe's seeded initialisation (round 0).
    ``norm_stats`` are the federation's aggregated statistics; they go into the processors.
    ``device`` defaults to CUDA when available. ``norm_hook`` (DP only) receives per-unit
    gradient norms before/after clipping each step: for tests and audits, it sees private data.
    """
    if isinstance(plan, Mapping):
        plan = LocalPlan.from_dict(plan)
    if not isinstance(plan, LocalPlan):
        raise ValueError(f"plan must be a LocalPlan, got {type(plan).__name__}")
    allowed = check_episodes(episodes)
    root = Path(dataset_root)
    dev = torch.device(device) if device is not None else default_device()
    started = time.perf_counter()

    info = read_info(root)
    bundle = build_for(recipe, recipe_config, code, info["features"], norm_stats, dev)
    policy = bundle.policy
    if global_weights is not None:
        apply_weights(policy, global_weights)  # validates names, shapes, dtypes, finiteness
    start = trainable_state(policy)
    man = manifest(start)
    params = {n: p for n, p in policy.named_parameters() if n in start}
    anchor = {n: t.to(dev) for n, t in start.items()}

    deltas = delta_timestamps(bundle, info["features"], info["fps"])
    source = FrameSource(root, allowed, deltas, bundle.preprocessor)
    data_gen = torch.Generator().manual_seed(plan.seed)
    eval_rows = source.random_rows(min(plan.eval_frames, source.num_frames), data_gen)
    eval_batch = source.batch(eval_rows, train=False)
    loss_before = eval_loss(bundle, eval_batch, plan.seed)

    if plan.optimizer == "sgd":
        opt = torch.optim.SGD(params.values(), lr=plan.lr, weight_decay=plan.weight_decay)
    else:
        opt = torch.optim.AdamW(params.values(), lr=plan.lr, weight_decay=plan.weight_decay)
    mechanism = None
    metrics: dict[str, Any] = {}
    with seeded(plan.seed, cuda_indices(dev)):
        policy.train()
        if plan.dp:
            mechanism, metrics = run_dp(bundle, params, anchor, opt, source, plan, progress, norm_hook)
        else:
            metrics = run_plain(bundle, params, anchor, opt, source, plan, data_gen, progress)

    loss_after = eval_loss(bundle, eval_batch, plan.seed)
    end = trainable_state(policy)
    update = {n: end[n] - start[n] for n in start}
    elapsed = time.perf_counter() - started
    metrics.update(
        recipe=bundle.recipe,
        device=dev.type,
        steps=plan.local_steps,
        loss_before=loss_before,
        loss_after=loss_after,
        eval_frames=len(eval_rows),
        update_norm=_norm(update),
        mu=plan.mu,
        dp=plan.dp,
        privacy_unit=plan.unit if plan.dp else None,
        seconds=round(elapsed, 3),
    )
    if plan.dp and plan.unit == dpmod.FRAME:
        metrics["privacy_note"] = dpmod.FRAME_LEVEL_NOTE
    return LocalResult(update, metrics, mechanism, source.episodes_read(), man)


def _norm(tensors: Mapping[str, Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))
