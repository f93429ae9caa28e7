"""Privacy ledger arithmetic: compose a dataset's whole DP-SGD history with Opacus.

Every mechanism ever applied to a dataset (noise multiplier σ, sample rate q, steps) is kept,
and ε is recomputed by composing the *whole* history with Opacus's RDP or PRV accountant.
ε values are never added: adding per-study ε is a valid but very loose bound (the tests show
how loose). Composition is commutative, so entries with the same (σ, q) are merged before
they reach the accountant, which keeps long histories cheap (RDP is closed form per entry;
PRV convolves one discretised variable per distinct (σ, q)).

Privacy unit: a mechanism is either episode-level (the default: one demonstration is the unit)
or frame-level. Mixed histories are composed as they are, but the result only protects
*frames*: a frame-level mechanism gives an episode of F frames F-fold group privacy, which
the composition does not charge. :meth:`privacy.ledger.Ledger.privacy_unit` reports the
weakest unit, and that is the label a report must show. A dataset's budget (reservations,
charges, releases, ε over time) is :class:`privacy.ledger.Ledger`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
UNITS: tuple[str, ...] = ("episode", "frame")
_MAX_SIGMA = 1e6
_SEARCH_RTOL = 0.005


@dataclass(frozen=True)
class Mechanism:
    """One Poisson-subsampled Gaussian mechanism run ``steps`` times.

    ``noise_multiplier == 0`` means no noise (ε = ∞ as soon as ``steps > 0``).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    unit: str = "episode"

    def __post_init__(self) -> None:
        sigma = _real("noise_multiplier", self.noise_multiplier)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(
                f"noise_multiplier must be a finite number >= 0 (0 means no privacy), got {sigma}"
            )
        q = _real("sample_rate", self.sample_rate)
        if not 0 < q <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {q}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int | np.integer):
            raise ValueError(f"steps must be an integer, got {self.steps!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        object.__setattr__(self, "noise_multiplier", sigma)
        object.__setattr__(self, "sample_rate", q)
        object.__setattr__(self, "steps", int(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mechanism:
        """Inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        required = {"noise_multiplier", "sample_rate", "steps"}
        known = required | {"unit"}
        if missing := required - data.keys():
            raise ValueError(f"mechanism is missing {sorted(missing)}")
        if unknown := data.keys() - known:
            raise ValueError(f"mechanism has unknown keys {sorted(unknown)}")
        return cls(**dict(data))


def epsilon(history: Sequence[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` of the composition of every mechanism in ``history``."""
    _check_delta(delta)
    _check_accountant(accountant)
    merged = _merge(history)
    if not merged:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in merged):
        return math.inf
    from opacus.accountants import PRVAccountant, RDPAccountant  # imports torch: only when composing

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = merged
    try:
        with np.errstate(divide="ignore"):  # PRV takes log(1 - q) = log(0) when q == 1
            return float(acc.get_epsilon(delta=delta))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"the {accountant} accountant failed on this history ({exc}); "
            "try accountant='rdp' or a larger delta"
        ) from exc


def project(history: Sequence[Mechanism], plan: Mechanism, delta: float, accountant: str = "rdp") -> float:
    """ε of ``history`` after ``plan`` is also run."""
    return epsilon([*history, plan], delta, accountant)


def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    history: Sequence[Mechanism] = (),
    accountant: str = "rdp",
) -> float:
    """Smallest σ for a plan (q, steps) such that ε(history + plan) <= target_epsilon.

    Errs on the safe side: the returned σ meets the target, with ε at most 0.5 % below it.
    Raises ValueError when the history alone already reaches the target, or when the
    target is out of the accountant's reach at this δ (RDP over Opacus's default orders
    cannot certify ε below about 0.1 at δ=1e-5, whatever the noise).
    """
    target = _real("target_epsilon", target_epsilon)
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target}")
    _check_delta(delta)
    _check_accountant(accountant)
    Mechanism(1.0, sample_rate, steps)  # validates sample_rate and steps
    if steps == 0:
        raise ValueError("steps must be >= 1: a plan with no steps needs no noise")
    already = epsilon(history, delta, accountant)
    if already >= target:
        raise ValueError(
            f"the history alone already spends ε={already:.4g} >= target {target:.4g}; "
            "no amount of noise can fit a further plan"
        )

    def eps_at(kind: str) -> Callable[[float], float]:
        return lambda sigma: epsilon([*history, Mechanism(sigma, sample_rate, steps)], delta, kind)

    with warnings.catch_warnings():  # RDP warns when the best order is at the edge
        warnings.simplefilter("ignore", UserWarning)
        floor = _rdp_floor(history, delta)
        if accountant == "rdp" and floor >= target:
            raise ValueError(
                f"the RDP accountant cannot certify ε={target:g} at δ={delta:g} "
                f"(its limit for infinite noise is {floor:.4g}); "
                "use accountant='prv' or a larger target"
            )
        # RDP is cheap and robust at any σ; PRV is tighter (needs less noise) but costly
        # at small σ, so PRV is searched from the RDP answer downwards.
        start = _search(eps_at("rdp"), target, 1.0) if floor < target else 1.0
        if accountant == "rdp":
            return start
        return _search(eps_at("prv"), target, start)


def _rdp_floor(history: Sequence[Mechanism], delta: float) -> float:
    """RDP's ε for ``history`` plus a plan with infinite noise (the plan adds nothing)."""
    from opacus.accountants import RDPAccountant  # imports torch: only when composing
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = np.zeros(len(orders))
    for sigma, q, n in _merge(history):
        rdp = rdp + rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=n, orders=orders)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


def _search(eps_of: Callable[[float], float], target: float, start: float) -> float:
    """Smallest σ with eps_of(σ) <= target, to within ``_SEARCH_RTOL`` of ε.

    Brackets geometrically from ``start``, then interpolates in log-log space (ε is close
    to a power law in σ), kept 10 % inside the bracket so that it always shrinks. The upper
    end always satisfies the target, and it is what is returned.
    """
    hi, eps_hi = start, eps_of(start)
    lo, eps_lo = 0.0, math.inf
    while eps_hi > target:
        lo, eps_lo = hi, eps_hi
        hi *= 2
        if hi > _MAX_SIGMA:
            raise ValueError(f"no noise multiplier up to {_MAX_SIGMA:g} meets ε={target:g}")
        eps_hi = eps_of(hi)
    if lo == 0.0:
        lo, eps_lo = hi / 2, eps_of(hi / 2)
        while eps_lo <= target:
            if lo < 1e-6:
                return lo
            hi, eps_hi = lo, eps_lo
            lo, eps_lo = lo / 2, eps_of(lo / 2)
    while eps_hi < target * (1 - _SEARCH_RTOL) and hi - lo > 1e-9 * hi:
        x_lo, x_hi = math.log(lo), math.log(hi)
        y_lo = math.log(eps_lo / target) if math.isfinite(eps_lo) else math.inf
        y_hi = math.log(eps_hi / target) if eps_hi > 0 else -math.inf
        t = y_lo / (y_lo - y_hi) if math.isfinite(y_lo - y_hi) else 0.5
        x = x_lo + min(max(t, 0.1), 0.9) * (x_hi - x_lo)
        mid = math.exp(x)
        eps_mid = eps_of(mid)
        if eps_mid <= target:
            hi, eps_hi = mid, eps_mid
        else:
            lo, eps_lo = mid, eps_mid
    return hi


def _merge(history: Sequence[Mechanism]) -> list[tuple[float, float, int]]:
    """Opacus history tuples (σ, q, steps), one per distinct (σ, q), empty entries dropped."""
    _check_history(history)
    steps: dict[tuple[float, float], int] = {}
    for m in history:
        if m.steps:
            key = (m.noise_multiplier, m.sample_rate)
            steps[key] = steps.get(key, 0) + m.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def _check_history(history: Sequence[Mechanism]) -> None:
    for m in history:
        if not isinstance(m, Mechanism):
            raise ValueError(f"history entries must be Mechanism, got {type(m).__name__}")


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _check_delta(delta: float) -> None:
    d = _real("delta", delta)
    if not 0 < d < 1:
        raise ValueError(f"delta must be in (0, 1), got {d}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
