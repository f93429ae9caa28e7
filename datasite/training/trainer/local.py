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

import contextlib
import json
import math
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import Tensor
from tqdm.auto import tqdm

from datasite.training import dp as dpmod
from datasite.training.recipes import (
    DEFAULT_RECIPE,
    PolicyBundle,
    build_bundle,
    build_policy,
    delta_timestamps,
)
from datasite.training.weights import apply_weights, trainable_state
from privacy.accounting import Mechanism

__all__ = ["LocalPlan", "LocalResult", "evaluate", "train_local"]

_DP_MODES = ("auto", "loop", "vmap")
_OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class LocalPlan:
    """What one local round does (validated on construction; ``from_dict`` for JSON).

    - ``local_steps``, ``lr``, ``weight_decay``, ``optimizer`` ("adamw" or "sgd"): the
      optimiser steps taken at this site.
    - ``batch_size``: frames per step without DP; with DP the *expected* number of units
      per step when ``sample_rate`` is not given (q = batch_size / number of units).
    - ``mu``: FedProx coefficient of μ/2·‖w − w_g‖² over the trainable weights (0 = FedAvg).
    - ``seed``: data order, dropout, evaluation batch (same inputs + seed → same update).
    - ``dp``, ``noise_multiplier`` σ, ``clip_norm`` C, ``sample_rate`` q, ``unit``
      ("episode", or the weaker "frame"), ``frames_per_episode`` K.
    - ``dp_mode``: per-unit gradients by "loop" (one backward per unit), "vmap"
      (``torch.func``; recipes that support it) or "auto" (vmap on CUDA or with a frozen
      backbone, else loop: the faster choice measured on CPU).
    - ``dp_seed``: seeds Poisson sampling and noise. ``None`` (production) draws it from OS
      entropy: whoever knows it could subtract the noise. Fix it only for tests and audits.
    - ``eval_frames``: size of the fixed evaluation batch.
    """

    local_steps: int = 30
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    mu: float = 0.0
    seed: int = 0
    dp: bool = False
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    sample_rate: float | None = None
    unit: str = dpmod.EPISODE
    frames_per_episode: int = 4
    dp_mode: str = "auto"
    dp_seed: int | None = None
    eval_frames: int = 16

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"LocalPlan: {msg}")

        for name in ("local_steps", "batch_size", "seed", "frames_per_episode", "eval_frames"):
            need(_is_int(getattr(self, name)), f"{name} must be an integer")
        for name in ("lr", "weight_decay", "mu", "noise_multiplier", "clip_norm"):
            need(_is_num(getattr(self, name)), f"{name} must be a finite number")
        need(self.local_steps >= 1, "local_steps must be >= 1")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.lr > 0, "lr must be > 0")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.optimizer in _OPTIMIZERS, f"optimizer must be one of {_OPTIMIZERS}")
        need(self.mu >= 0, "mu must be >= 0 (0 = FedAvg)")
        need(isinstance(self.dp, bool), "dp must be true or false")
        need(self.noise_multiplier >= 0, "noise_multiplier must be >= 0")
        need(self.clip_norm > 0, "clip_norm must be > 0")
        need(
            self.sample_rate is None or (_is_num(self.sample_rate) and 0 < self.sample_rate <= 1),
            "sample_rate must be in (0, 1] or null",
        )
        need(self.unit in (dpmod.EPISODE, dpmod.FRAME), "unit must be 'episode' or 'frame'")
        need(self.frames_per_episode >= 1, "frames_per_episode must be >= 1")
        need(self.dp_mode in _DP_MODES, f"dp_mode must be one of {_DP_MODES}")
        need(self.dp_seed is None or _is_int(self.dp_seed), "dp_seed must be an integer or null")
        need(self.eval_frames >= 1, "eval_frames must be >= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalPlan:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"LocalPlan: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    from datasite.training.weights import manifest as make_manifest

    if isinstance(plan, Mapping):
        plan = LocalPlan.from_dict(plan)
    if not isinstance(plan, LocalPlan):
        raise ValueError(f"plan must be a LocalPlan, got {type(plan).__name__}")
    allowed = _check_episodes(episodes)
    root = Path(dataset_root)
    dev = torch.device(device) if device is not None else _default_device()
    started = time.perf_counter()

    info = _read_info(root)
    bundle = _build(recipe, recipe_config, code, info["features"], norm_stats, dev)
    policy = bundle.policy
    if global_weights is not None:
        apply_weights(policy, global_weights)  # validates names, shapes, dtypes, finiteness
    start = trainable_state(policy)
    man = make_manifest(start)
    params = {n: p for n, p in policy.named_parameters() if n in start}
    anchor = {n: t.to(dev) for n, t in start.items()}

    deltas = delta_timestamps(bundle, info["features"], info["fps"])
    source = _FrameSource(root, allowed, deltas, bundle.preprocessor)
    data_gen = torch.Generator().manual_seed(plan.seed)
    eval_rows = source.random_rows(min(plan.eval_frames, source.num_frames), data_gen)
    eval_batch = source.batch(eval_rows, train=False)
    loss_before = _eval_loss(bundle, eval_batch, plan.seed)

    if plan.optimizer == "sgd":
        opt = torch.optim.SGD(params.values(), lr=plan.lr, weight_decay=plan.weight_decay)
    else:
        opt = torch.optim.AdamW(params.values(), lr=plan.lr, weight_decay=plan.weight_decay)
    mechanism = None
    metrics: dict[str, Any] = {}
    with _rng(plan.seed, dev):
        policy.train()
        if plan.dp:
            mechanism, metrics = _run_dp(bundle, params, anchor, opt, source, plan, progress, norm_hook)
        else:
            metrics = _run_plain(bundle, params, anchor, opt, source, plan, data_gen, progress)

    loss_after = _eval_loss(bundle, eval_batch, plan.seed)
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
    dev = torch.device(device) if device is not None else _default_device()
    info = _read_info(root)
    bundle = _build(recipe, recipe_config, code, info["features"], norm_stats, dev)
    apply_weights(bundle.policy, weights)
    source = _FrameSource(
        root,
        _check_episodes(episodes),
        delta_timestamps(bundle, info["features"], info["fps"]),
        bundle.preprocessor,
    )
    rows = source.random_rows(min(frames, source.num_frames), torch.Generator().manual_seed(seed))
    return _eval_loss(bundle, source.batch(rows, train=False), seed)


def _build(recipe, recipe_config, code, features, norm_stats, dev) -> PolicyBundle:
    """The policy of a code bundle, or of ``recipe`` + ``recipe_config``."""
    if code is None:
        return build_policy(recipe or DEFAULT_RECIPE, recipe_config, features, norm_stats, device=dev)
    if recipe is not None or recipe_config is not None:
        raise ValueError("give either code or recipe and recipe_config, not both")
    return build_bundle(code, features, norm_stats, device=dev)


# --------------------------------------------------------------------------- loops
def _run_plain(bundle, params, anchor, opt, source, plan, gen, progress) -> dict[str, Any]:
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


def _run_dp(bundle, params, anchor, opt, source, plan, progress, norm_hook):
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
    seed = plan.dp_seed if plan.dp_seed is not None else secrets.randbits(62)
    sample_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=dev).manual_seed(seed ^ 0x5EED)
    vmap_loss = None
    # measured on CPU: the loop is faster while the ResNet trains, vmap once it is frozen
    prefer_vmap = dev.type == "cuda" or bool(bundle.config.get("freeze_backbone"))
    if plan.dp_mode == "vmap" or (plan.dp_mode == "auto" and prefer_vmap):
        vmap_loss = bundle.vmap_loss
        if vmap_loss is None and plan.dp_mode == "vmap":
            raise ValueError(f"recipe {bundle.recipe!r} does not support dp_mode='vmap'")

    expected = q * len(units)
    sampled, empty = 0, 0
    steps = dpmod.unit_sampler(len(units), q, plan.local_steps, sample_gen)
    bar = tqdm(steps, total=plan.local_steps, desc=f"{bundle.recipe} DP", disable=not progress)
    for picked in bar:
        if plan.unit == dpmod.EPISODE:
            rows = [dpmod.sample_frames(source.rows_of(units[i]), k, sample_gen) for i in picked]
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
            generator=noise_gen,
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


@torch.no_grad()
def _eval_loss(bundle: PolicyBundle, batch: dict[str, Any], seed: int) -> float:
    """Loss on the fixed evaluation batch, eval mode, fixed RNG (comparable before/after)."""
    was_training = bundle.policy.training
    bundle.policy.eval()
    try:
        dev = next(bundle.policy.parameters()).device
        with _rng(seed + 7919, dev):
            return float(bundle.loss(batch))
    finally:
        bundle.policy.train(was_training)


# --------------------------------------------------------------------------- data
class _FrameSource:
    """Frames of the allowed episodes only, read through lerobot, preprocessed per batch.

    Every item's ``episode_index`` is checked against the allowed set and recorded."""

    def __init__(self, root: Path, allowed: list[int], deltas: dict | None, preprocess: Any) -> None:
        from datasite.training.dataset import load_dataset

        self.allowed = set(allowed)
        self.ds = load_dataset(root, episodes=allowed, delta_timestamps=deltas)
        column = self.ds.hf_dataset.data.column("episode_index").to_pylist()
        self._rows: dict[int, list[int]] = {}
        for row, ep in enumerate(column):
            self._rows.setdefault(int(ep), []).append(row)
        stray = set(self._rows) - self.allowed
        if stray:
            raise RuntimeError(f"dataset returned frames of non-allowed episodes {sorted(stray)}")
        empty = sorted(self.allowed - set(self._rows))
        if empty:
            raise ValueError(f"episodes {empty} have no frames in {root}")
        self.episodes = sorted(self._rows)
        self.num_frames = len(column)
        self._read: set[int] = set()
        self._train_items = 0
        self._train_eps: set[int] = set()
        self.preprocess = preprocess

    def rows_of(self, episode: int) -> list[int]:
        return self._rows[episode]

    def random_rows(self, n: int, gen: torch.Generator) -> list[int]:
        if n <= self.num_frames:
            return torch.randperm(self.num_frames, generator=gen)[:n].tolist()
        return torch.randint(self.num_frames, (n,), generator=gen).tolist()

    def items(self, rows: list[int]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            item = self.ds[r]
            ep = int(item["episode_index"])
            if ep not in self.allowed:  # defence in depth: never train on withdrawn data
                raise RuntimeError(f"read a frame of non-allowed episode {ep}")
            self._read.add(ep)
            out.append(item)
        return out

    def batch(self, rows: list[int], train: bool = True) -> dict[str, Any]:
        """Collated and preprocessed (normalised, on the policy's device) batch of ``rows``."""
        from torch.utils.data import default_collate

        items = self.items(rows)
        if train:
            self._train_items += len(items)
            self._train_eps.update(int(i["episode_index"]) for i in items)
        return self.preprocess(default_collate(items))

    def counts(self) -> dict[str, int]:
        return {"frames_used": self._train_items, "episodes_used": len(self._train_eps)}

    def episodes_read(self) -> list[int]:
        return sorted(self._read)


def _check_episodes(episodes: Any) -> list[int]:
    if not isinstance(episodes, list | tuple) or not episodes:
        raise ValueError("episodes must be a non-empty list of episode indices")
    if not all(_is_int(e) and e >= 0 for e in episodes):
        raise ValueError(f"episodes must be non-negative integers, got {episodes!r}")
    return sorted({int(e) for e in episodes})


def _read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
        return {"features": info["features"], "fps": info["fps"]}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{root} is not a LeRobot dataset ({path}: {exc})") from exc


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _rng(seed: int, dev: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout, VAE, diffusion noise) without leaking the state."""
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _norm(tensors: Mapping[str, Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
