"""What one local round does: :class:`LocalPlan`, validated on construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from datasite.training import dp as dpmod
from privacy.csprng import MIN_KEY_BYTES

__all__ = ["LocalPlan", "is_int", "is_num"]

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
    - ``dp_seed``: the secret key (bytes, at least 16; 32 recommended) of the CSPRNG behind
      Poisson sampling, frame choice and noise (:mod:`datasite.training.dp`). ``None``
      (production) draws 32 bytes from OS entropy; a site derives it with a full-length keyed
      hash so that a retried round repeats its noise. Whoever knows it could subtract the
      noise: fix it only for tests and audits.
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
    dp_seed: bytes | None = field(default=None, repr=False)  # a secret: never in logs
    eval_frames: int = 16

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"LocalPlan: {msg}")

        for name in ("local_steps", "batch_size", "seed", "frames_per_episode", "eval_frames"):
            need(is_int(getattr(self, name)), f"{name} must be an integer")
        for name in ("lr", "weight_decay", "mu", "noise_multiplier", "clip_norm"):
            need(is_num(getattr(self, name)), f"{name} must be a finite number")
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
            self.sample_rate is None or (is_num(self.sample_rate) and 0 < self.sample_rate <= 1),
            "sample_rate must be in (0, 1] or null",
        )
        need(self.unit in (dpmod.EPISODE, dpmod.FRAME), "unit must be 'episode' or 'frame'")
        need(self.frames_per_episode >= 1, "frames_per_episode must be >= 1")
        need(self.dp_mode in _DP_MODES, f"dp_mode must be one of {_DP_MODES}")
        need(
            self.dp_seed is None or (isinstance(self.dp_seed, bytes) and len(self.dp_seed) >= MIN_KEY_BYTES),
            f"dp_seed must be null or a secret key of at least {MIN_KEY_BYTES} bytes",
        )
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


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)
