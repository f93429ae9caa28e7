"""The local training loops: plain SGD over frames, and DP-SGD over episodes (or frames);
both add the FedProx proximal gradient μ(w − w_g)."""

from __future__ import annotations

import secrets
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from datasite.training import dp as dpmod
from privacy.accounting import Mechanism

__all__ = ["run_dp", "run_plain"]


def run_plain(bundle, params, anchor, opt, source, plan, gen, progress) -> dict[str, Any]:
    """Non-private SGD: ``batch_size`` frames drawn uniformly from the allowed frames."""
    losses = []
    bar = tqdm(range(plan.local_steps), desc=f"{bundle.recipe} local", disable=not progress)
    for _ in bar:
        batch = source.batch(source.random_rows(plan.batch_size, gen))
        loss = bundle.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _add_proximal_grad(params, anchor, plan.mu)
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return {"train_loss_first": losses[0], "train_loss_last": losses[-1]} | source.counts()


def run_dp(bundle, params, anchor, opt, source, plan, progress, norm_hook):
    """Episode- (or frame-) level DP-SGD; see :mod:`datasite.training.dp`."""
    if plan.unit == dpmod.EPISODE:
        units, k = source.episodes, plan.frames_per_episode
    else:
        units, k = list(range(source.num_frames)), 1
    q = plan.sample_rate if plan.sample_rate is not None else plan.batch_size / len(units)
    if q > 1:
        raise ValueError(
            f"expected {plan.batch_size} {plan.unit}s per step but only {len(units)} are allowed; "
            "lower batch_size or give sample_rate"
        )
    mechanism = Mechanism(
        noise_multiplier=plan.noise_multiplier,
        sample_rate=q,
        steps=plan.local_steps,
        unit=plan.unit,
    )
    dev = next(iter(params.values())).device
    # every draw the DP guarantee rests on comes from a CSPRNG keyed by ≥ 128 secret bits
    streams = dpmod.dp_streams(plan.dp_seed if plan.dp_seed is not None else secrets.token_bytes(32))
    vmap_loss = None
    # measured on CPU: the loop is faster while the ResNet trains, vmap once it is frozen
    prefer_vmap = dev.type == "cuda" or bool(bundle.config.get("freeze_backbone"))
    if plan.dp_mode == "vmap" or (plan.dp_mode == "auto" and prefer_vmap):
        vmap_loss = bundle.vmap_loss
        if vmap_loss is None and plan.dp_mode == "vmap":
            raise ValueError(f"recipe {bundle.recipe!r} does not support dp_mode='vmap'")

    expected = q * len(units)
    sampled, empty = 0, 0
    steps = dpmod.unit_sampler(len(units), q, plan.local_steps, streams.units)
    bar = tqdm(steps, total=plan.local_steps, desc=f"{bundle.recipe} DP", disable=not progress)
    for picked in bar:
        if plan.unit == dpmod.EPISODE:
            rows = [dpmod.sample_frames(source.rows_of(units[i]), k, streams.frames) for i in picked]
        else:
            rows = [[units[i]] for i in picked]
        batches = [source.batch(r) for r in rows]  # each unit preprocessed on its own
        grads = dpmod.noisy_clipped_gradient(
            bundle.policy,
            params,
            batches,
            bundle.loss_fn,
            clip_norm=plan.clip_norm,
            noise_multiplier=plan.noise_multiplier,
            expected_units=expected,
            noise=streams.noise,
            vmap_loss=vmap_loss,
            norm_hook=norm_hook,
        )
        for name, p in params.items():
            p.grad = grads[name]
        _add_proximal_grad(params, anchor, plan.mu)  # data-independent: no privacy cost
        opt.step()
        opt.zero_grad(set_to_none=True)
        sampled += len(picked)
        empty += not picked
    metrics = source.counts() | {
        "sample_rate": q,
        "noise_multiplier": plan.noise_multiplier,
        "clip_norm": plan.clip_norm,
        "frames_per_unit": k,
        "expected_units_per_step": expected,
        "units_sampled": sampled,
        "empty_steps": empty,
        "dp_mode": "vmap" if vmap_loss is not None else "loop",
    }
    return mechanism, metrics


def _add_proximal_grad(params: dict[str, Tensor], anchor: dict[str, Tensor], mu: float) -> None:
    """Gradient of μ/2·‖w − w_g‖²: adds μ(w − w_g) to each trainable parameter's grad."""
    if mu == 0:
        return
    with torch.no_grad():
        for name, p in params.items():
            prox = (p - anchor[name]).mul_(mu)
            p.grad = prox if p.grad is None else p.grad.add_(prox)
