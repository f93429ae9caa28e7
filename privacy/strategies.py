"""Server strategies as pure functions, split so that they work under secure aggregation.

Modelled on Flower's strategies, over dicts ``name -> numpy float array``. The server may
only see *sums* (pairwise masking or CKKS), so every strategy is written in two halves:

1. client side, :func:`client_contribution`: each site pre-weights its update and lists the
   scalars to be summed alongside it (FedAvg: ``n·Δ`` and ``{"weight": n}``; FedNova:
   ``n·Δ/τ`` and ``{"weight": n, "weighted_steps": n·τ}``). The scalars reveal a site's
   example count, so they belong in the same masked/encrypted vector as the update;
2. server side, :func:`aggregate`: from the summed vector and summed scalars alone, the
   averaged pseudo-update; then :func:`server_update` applies it to the global weights
   (FedAvg/FedProx/FedNova plainly, FedAvgM with server momentum, FedAdam/FedYogi as in
   Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2, without bias
   correction, v initialised to τ²).

Plain mode goes through the same two halves (:func:`aggregate_plain`), with
:func:`sum_arrays` standing in for the secure sum. Accumulation is float64 throughout;
new weights keep the dtype of the global weights. Only floating-point tensors are
exchanged: integer buffers (step counters, masks) must never be averaged.
FedProx's μ is client-side only (the local proximal term μ/2·‖w − w_g‖²); it is carried in
:class:`ServerHParams` so that one object holds a study's strategy settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from enum import StrEnum
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]
Scalars = dict[str, float]


class Strategy(StrEnum):
    """Names of the server strategies."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDNOVA = "fednova"


STRATEGIES: tuple[str, ...] = tuple(s.value for s in Strategy)
ADAPTIVE: frozenset[Strategy] = frozenset({Strategy.FEDADAM, Strategy.FEDYOGI})
DEFAULT_SERVER_LR: dict[Strategy, float] = {s: (1e-2 if s in ADAPTIVE else 1.0) for s in Strategy}
_SCALAR_KEYS: dict[Strategy, frozenset[str]] = {
    s: frozenset({"weight", "weighted_steps"} if s is Strategy.FEDNOVA else {"weight"}) for s in Strategy
}
_STATE_SLOTS: tuple[str, ...] = ("momentum", "m", "v")


def parse_strategy(name: str | Strategy) -> Strategy:
    """The :class:`Strategy` called ``name``; ValueError listing the known names otherwise."""
    try:
        return Strategy(name)
    except ValueError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None


@dataclass(frozen=True)
class ServerHParams:
    """Strategy hyperparameters; ``server_lr=None`` means :data:`DEFAULT_SERVER_LR`."""

    server_lr: float | None = None
    momentum: float = 0.9  # FedAvgM β
    beta1: float = 0.9  # FedAdam / FedYogi
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity ε of Reddi et al.
    proximal_mu: float = 0.0  # FedProx, used by the clients only

    def __post_init__(self) -> None:
        if self.server_lr is not None:
            _check_range("server_lr", self.server_lr, 0.0, math.inf, low_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("beta1", self.beta1, 0.0, 1.0)
        _check_range("beta2", self.beta2, 0.0, 1.0)
        _check_range("tau", self.tau, 0.0, math.inf, low_open=True)
        _check_range("proximal_mu", self.proximal_mu, 0.0, math.inf)

    def lr_for(self, strategy: str | Strategy) -> float:
        """The server learning rate used for ``strategy``."""
        s = parse_strategy(strategy)
        return DEFAULT_SERVER_LR[s] if self.server_lr is None else float(self.server_lr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerHParams:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if unknown := data.keys() - {f.name for f in fields(cls)}:
            raise ValueError(f"unknown strategy hyperparameters {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class ServerState:
    """Server-side optimiser state carried from round to round (float64 arrays)."""

    round: int = 0
    strategy: str | None = None
    momentum: Arrays | None = None  # FedAvgM
    m: Arrays | None = None  # FedAdam / FedYogi first moment
    v: Arrays | None = None  # FedAdam / FedYogi second moment

    def to_checkpoint(self) -> tuple[Arrays, dict[str, Any]]:
        """Tensors for ``safetensors.numpy.save`` (keys ``slot.name``) and JSON metadata."""
        tensors: Arrays = {}
        slots = []
        for slot in _STATE_SLOTS:
            arrays = getattr(self, slot)
            if arrays is not None:
                slots.append(slot)
                for name, arr in arrays.items():
                    tensors[f"{slot}.{name}"] = np.ascontiguousarray(arr, dtype=np.float64)
        return tensors, {"round": self.round, "strategy": self.strategy, "slots": slots}

    @classmethod
    def from_checkpoint(cls, tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any] | str) -> ServerState:
        """Inverse of :meth:`to_checkpoint`; ``meta`` may also be its JSON string."""
        if isinstance(meta, str):
            meta = json.loads(meta)
        slots = list(meta.get("slots", []))
        if unknown := set(slots) - set(_STATE_SLOTS):
            raise ValueError(f"unknown server state slots {sorted(unknown)}")
        found: dict[str, Arrays] = {slot: {} for slot in slots}
        for key, arr in tensors.items():
            slot, _, name = key.partition(".")
            if slot not in found or not name:
                raise ValueError(f"unexpected tensor {key!r} in server state checkpoint")
            found[slot][name] = np.asarray(arr, dtype=np.float64)
        strategy = meta.get("strategy")
        return cls(
            round=int(meta.get("round", 0)),
            strategy=None if strategy is None else parse_strategy(strategy).value,
            **found,
        )


@dataclass(frozen=True)
class ClientResult:
    """One site's plain-mode result: its update Δ = w_local − w_global and its weights."""

    update: Mapping[str, np.ndarray]
    num_examples: int
    local_steps: int = 1


def client_contribution(
    update: Mapping[str, np.ndarray], num_examples: int, local_steps: int, strategy: str
) -> tuple[Arrays, Scalars]:
    """Client half: the pre-weighted vector and the scalars to be summed alongside it."""
    scale, scalars = contribution_scale(num_examples, local_steps, strategy)
    arrays = checked_float64(update, "update")
    return {k: v * scale for k, v in arrays.items()}, scalars


def contribution_scale(num_examples: int, local_steps: int, strategy: str) -> tuple[float, Scalars]:
    """The factor a client multiplies its update by, and the scalars summed alongside it."""
    s = parse_strategy(strategy)
    _check_count("num_examples", num_examples)
    _check_count("local_steps", local_steps)
    n = float(num_examples)
    if s is Strategy.FEDNOVA:
        return n / local_steps, {"weight": n, "weighted_steps": n * local_steps}
    return n, {"weight": n}


def sum_arrays(items: Sequence[Mapping[str, np.ndarray]], what: str = "contribution") -> Arrays:
    """Element-wise float64 sum of dicts with the same names and shapes (the plain 'secure sum')."""
    if not items:
        raise ValueError(f"nothing to sum: no {what}s")
    total = {k: v.copy() for k, v in checked_float64(items[0], f"{what} 0").items()}
    for i, item in enumerate(items[1:], start=1):
        arrays = checked_float64(item, f"{what} {i}")
        check_same_layout(total, arrays, f"{what} 0", f"{what} {i}")
        for k, v in arrays.items():
            total[k] += v
    return total


def sum_contributions(
    contributions: Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, float]]],
) -> tuple[Arrays, Scalars]:
    """Sum the client halves' vectors and scalars, as the secure aggregation would."""
    vectors = sum_arrays([vec for vec, _ in contributions])
    scalars = sum_arrays(
        [{k: np.asarray(float(x)) for k, x in sc.items()} for _, sc in contributions], "scalar set"
    )
    return vectors, {k: float(v) for k, v in scalars.items()}


def aggregate(
    summed_vector: Mapping[str, np.ndarray], summed_scalars: Mapping[str, float], strategy: str
) -> Arrays:
    """Server half: the averaged pseudo-update from the sums alone.

    FedAvg-like: ΣnΔ / Σn. FedNova: τ_eff · Σ p_i Δ_i/τ_i with p_i = n_i/N and
    τ_eff = Σ p_i τ_i, i.e. (Σ n_i τ_i / N) · (Σ n_i Δ_i/τ_i) / N.
    """
    s = parse_strategy(strategy)
    if set(summed_scalars) != _SCALAR_KEYS[s]:
        raise ValueError(
            f"{s.value} needs summed scalars {sorted(_SCALAR_KEYS[s])}, got {sorted(summed_scalars)}"
        )
    weight = _positive("summed weight", summed_scalars["weight"])
    factor = 1.0 / weight
    if s is Strategy.FEDNOVA:
        tau_eff = _positive("summed weighted_steps", summed_scalars["weighted_steps"]) / weight
        factor *= tau_eff
    return {k: v * factor for k, v in checked_float64(summed_vector, "summed vector").items()}


def aggregate_plain(results: Sequence[ClientResult], strategy: str) -> Arrays:
    """Plain mode: both halves, with :func:`sum_contributions` in place of the secure sum."""
    contributions = [client_contribution(r.update, r.num_examples, r.local_steps, strategy) for r in results]
    return aggregate(*sum_contributions(contributions), strategy)


def server_update(
    strategy: str,
    global_weights: Mapping[str, np.ndarray],
    avg_update: Mapping[str, np.ndarray],
    state: ServerState,
    hparams: ServerHParams,
) -> tuple[Arrays, ServerState]:
    """Apply the averaged pseudo-update; returns new weights (dtype of the old) and state."""
    s = parse_strategy(strategy)
    if state.strategy is not None and state.strategy != s.value:
        raise ValueError(f"server state belongs to {state.strategy!r}, not {s.value!r}")
    weights = checked_float64(global_weights, "global weights")
    delta = checked_float64(avg_update, "averaged update")
    check_same_layout(weights, delta, "global weights", "averaged update")
    prev = {slot: _state_slot(state, slot, weights) for slot in _STATE_SLOTS}
    lr = hparams.lr_for(s)
    new_state = replace(state, round=state.round + 1, strategy=s.value)

    if s is Strategy.FEDAVGM:
        mom0 = prev["momentum"] or {k: np.zeros_like(d) for k, d in delta.items()}
        mom = {k: hparams.momentum * mom0[k] + d for k, d in delta.items()}
        step, new_state = mom, replace(new_state, momentum=mom)
    elif s in ADAPTIVE:
        m, v = _adaptive_moments(s, delta, prev["m"], prev["v"], hparams)
        step = {k: m[k] / (np.sqrt(v[k]) + hparams.tau) for k in delta}
        new_state = replace(new_state, m=m, v=v)
    else:  # FedAvg, FedProx, FedNova
        step = delta

    new_weights = {
        k: (weights[k] + lr * step[k]).astype(np.asarray(global_weights[k]).dtype) for k in weights
    }
    return new_weights, new_state


def _state_slot(state: ServerState, slot: str, weights: Arrays) -> Arrays | None:
    """A validated float64 copy of ``state.<slot>``, laid out like the weights, or None."""
    arrays = getattr(state, slot)
    if arrays is None:
        return None
    checked = checked_float64(arrays, f"state.{slot}")
    check_same_layout(weights, checked, "global weights", f"state.{slot}")
    return checked


def _adaptive_moments(
    s: Strategy, delta: Arrays, m_prev: Arrays | None, v_prev: Arrays | None, hp: ServerHParams
) -> tuple[Arrays, Arrays]:
    """Reddi et al. first and second moments (Adam or Yogi), m starting at 0, v at τ²."""
    m0 = m_prev or {k: np.zeros_like(d) for k, d in delta.items()}
    v0 = v_prev or {k: np.full_like(d, hp.tau**2) for k, d in delta.items()}
    m = {k: hp.beta1 * m0[k] + (1 - hp.beta1) * d for k, d in delta.items()}
    if s is Strategy.FEDADAM:
        v = {k: hp.beta2 * v0[k] + (1 - hp.beta2) * d * d for k, d in delta.items()}
    else:
        v = {k: v0[k] - (1 - hp.beta2) * d * d * np.sign(v0[k] - d * d) for k, d in delta.items()}
    return m, v


def checked_float64(arrays: Mapping[str, np.ndarray], what: str) -> Arrays:
    """Validated float64 copies: str names, floating dtype, finite values, at least one."""
    if not isinstance(arrays, Mapping):
        raise ValueError(f"{what} must be a mapping of name -> array, got {type(arrays).__name__}")
    if not arrays:
        raise ValueError(f"{what} has no tensors")
    out: Arrays = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: tensor names must be non-empty strings, got {name!r}")
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"{what}: tensor {name!r} has dtype {arr.dtype}; only floating-point tensors "
                "are aggregated (never average integer buffers)"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: tensor {name!r} contains NaN or inf")
        out[name] = arr.astype(np.float64)
    return out


def check_same_layout(a: Arrays, b: Arrays, a_name: str, b_name: str) -> None:
    """`ValueError` unless `b` has the same tensor names and shapes as `a`."""
    if a.keys() != b.keys():
        missing, extra = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise ValueError(f"{b_name} names differ from {a_name}: missing {missing}, extra {extra}")
    for k, v in a.items():
        if v.shape != b[k].shape:
            raise ValueError(f"{b_name}: tensor {k!r} has shape {b[k].shape}, {a_name} has {v.shape}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _positive(name: str, value: float) -> float:
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return x


def _check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok_low = value > low if low_open else value >= low
    ok_high = value < high if high_open else value <= high
    if not (math.isfinite(value) and ok_low and ok_high):
        lb, hb = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{hb}, got {value}")
