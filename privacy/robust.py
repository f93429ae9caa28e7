"""Byzantine-robust aggregation for plain mode, as pure functions over update dicts.

Plain mode is the only one where the server sees each site's update Δ (``name -> float
array``), so only there can it discard or down-weight outliers:

- Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent"): each update's score is the sum of its squared Euclidean
  distances (over all tensors) to its n − f − 2 closest other updates; Krum keeps the update
  of lowest score, Multi-Krum averages the m lowest (m = n − f by default). Needs n ≥ 2f + 3.
  Ties go to the lower index.
- Coordinate-wise trimmed mean: per coordinate, drop the k largest and k smallest values and
  average the rest (k = f, or ⌊β·n⌋ for a fraction β). Needs n > 2k.
- Coordinate-wise median. Tolerates f < n/2 Byzantine updates.

Combination with the strategies of :mod:`privacy.strategies`: a robust rule *replaces* the
weighted mean of the updates (the FedAvg/FedProx average of :func:`aggregate_plain`), and its
result feeds :func:`server_update` unchanged, so the server optimisers (FedAvgM, FedAdam,
FedYogi) still apply on top of the robust average. Every site counts once: example counts are
reported by the sites themselves, and weighting by them would let one Byzantine site claim the
whole average. FedNova is refused: its average needs each site's local step count, which a
robust rule cannot take into account.
Accumulation is float64; inputs must be finite floating-point arrays of one layout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from privacy.strategies import (
    Arrays,
    ClientResult,
    Strategy,
    aggregate_plain,
    check_same_layout,
    checked_float64,
    parse_strategy,
)


class Robust(StrEnum):
    """Names of the robust aggregation rules (``none``: the strategy's weighted mean)."""

    NONE = "none"
    KRUM = "krum"
    MULTIKRUM = "multikrum"
    TRIMMED_MEAN = "trimmed_mean"
    MEDIAN = "median"


ROBUST_METHODS: tuple[str, ...] = tuple(r.value for r in Robust)
SELECTING: frozenset[Robust] = frozenset({Robust.KRUM, Robust.MULTIKRUM})


def parse_method(name: str | Robust) -> Robust:
    """The :class:`Robust` rule called ``name``; ValueError listing the known names otherwise."""
    try:
        return Robust(name)
    except ValueError:
        raise ValueError(f"unknown robust aggregation {name!r}; known: {', '.join(ROBUST_METHODS)}") from None


def min_updates(method: str | Robust, f: int, m: int | None = None) -> int:
    """The fewest updates with which ``method`` tolerates ``f`` Byzantine ones (Multi-Krum
    averaging ``m`` of them also needs m + f)."""
    r = parse_method(method)
    _check_f(f)
    if r is Robust.NONE:
        return 1
    if r in SELECTING:
        return max(2 * f + 3, (m or 1) + f)
    return 2 * f + 1


@dataclass(frozen=True)
class RobustResult:
    """A robust average, and for Krum/Multi-Krum the indices of the kept updates, best first."""

    update: Arrays
    selected: tuple[int, ...] | None = None


def krum_scores(updates: Sequence[Mapping[str, np.ndarray]], f: int) -> np.ndarray:
    """Each update's Krum score: the sum of squared distances to its n − f − 2 closest others."""
    return _scores(_validated(updates), f)


def multi_krum(
    updates: Sequence[Mapping[str, np.ndarray]], f: int, m: int | None = None
) -> tuple[Arrays, tuple[int, ...]]:
    """Multi-Krum: the mean of the ``m`` updates of lowest Krum score (default n − f), and
    their indices, best first."""
    arrays = _validated(updates)
    scores = _scores(arrays, f)
    n = len(arrays)
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= n - f:
        raise ValueError(f"Multi-Krum averages m in [1, n - f] = [1, {n - f}] updates, got m={m!r}")
    chosen = tuple(int(i) for i in np.argsort(scores, kind="stable")[:m])
    return {k: np.mean([arrays[i][k] for i in chosen], axis=0) for k in arrays[0]}, chosen


def krum(updates: Sequence[Mapping[str, np.ndarray]], f: int) -> tuple[Arrays, int]:
    """Krum: the update of lowest score (a float64 copy) and its index."""
    update, chosen = multi_krum(updates, f, 1)
    return update, chosen[0]


def trimmed_mean(
    updates: Sequence[Mapping[str, np.ndarray]], f: int | None = None, *, beta: float | None = None
) -> Arrays:
    """Coordinate-wise mean after dropping the k largest and k smallest values, where k = ``f``
    or ⌊``beta``·n⌋ (give exactly one)."""
    arrays = _validated(updates)
    n = len(arrays)
    if (f is None) == (beta is None):
        raise ValueError("trimmed mean: give exactly one of f (updates trimmed per end) or beta (fraction)")
    if beta is not None:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < 0.5:
            raise ValueError(f"trimmed mean: beta must be in [0, 0.5), got {beta!r}")
        k = math.floor(beta * n)
    else:
        _check_f(f)
        k = int(f)
    if n <= 2 * k:
        raise ValueError(f"trimmed mean trimming {k} per end needs n > 2k = {2 * k}, got {n}")
    return {name: np.sort(_stack(arrays, name), axis=0)[k : n - k].mean(axis=0) for name in arrays[0]}


def coordinate_median(updates: Sequence[Mapping[str, np.ndarray]], f: int = 0) -> Arrays:
    """Coordinate-wise median; ``f``, the Byzantine updates to tolerate, needs n > 2f."""
    arrays = _validated(updates)
    _check_f(f)
    if len(arrays) <= 2 * f:
        raise ValueError(
            f"the median tolerating f={f} Byzantine updates needs n > 2f = {2 * f}, got {len(arrays)}"
        )
    return {name: np.median(_stack(arrays, name), axis=0) for name in arrays[0]}


def check_strategy(strategy: str | Strategy, method: str | Robust) -> None:
    """Refuse a strategy that a robust rule cannot be combined with (FedNova)."""
    s, r = parse_strategy(strategy), parse_method(method)
    if r is not Robust.NONE and s is Strategy.FEDNOVA:
        raise ValueError(
            f"robust aggregation ({r.value}) cannot be combined with fednova: FedNova's average "
            "weights each update by its local steps; use fedavg, fedprox or a server optimiser"
        )


def aggregate_robust(
    results: Sequence[ClientResult], strategy: str, method: str, f: int = 0, m: int | None = None
) -> RobustResult:
    """Plain mode with a robust rule in place of the weighted mean (``none``: :func:`aggregate_plain`);
    the result's ``update`` goes to :func:`server_update` as the averaged update."""
    check_strategy(strategy, method)
    r = parse_method(method)
    if m is not None and r is not Robust.MULTIKRUM:
        raise ValueError(f"m is a Multi-Krum setting, not one of {r.value}")
    updates = [res.update for res in results]
    if r is Robust.NONE:
        return RobustResult(aggregate_plain(results, strategy))
    if r is Robust.KRUM:
        update, chosen = krum(updates, f)
        return RobustResult(update, (chosen,))
    if r is Robust.MULTIKRUM:
        return RobustResult(*multi_krum(updates, f, m))
    if r is Robust.TRIMMED_MEAN:
        return RobustResult(trimmed_mean(updates, f))
    return RobustResult(coordinate_median(updates, f))


def _validated(updates: Sequence[Mapping[str, np.ndarray]]) -> list[Arrays]:
    """Float64 copies of the updates, all with the layout of the first; at least one."""
    if isinstance(updates, Mapping) or not isinstance(updates, Sequence) or not updates:
        raise ValueError("robust aggregation needs a non-empty sequence of updates")
    arrays = [checked_float64(u, f"update {i}") for i, u in enumerate(updates)]
    for i, a in enumerate(arrays[1:], start=1):
        check_same_layout(arrays[0], a, "update 0", f"update {i}")
    return arrays


def _scores(arrays: list[Arrays], f: int) -> np.ndarray:
    n = len(arrays)
    _check_f(f)
    if n < 2 * f + 3:
        raise ValueError(f"Krum tolerating f={f} Byzantine updates needs n >= 2f+3 = {2 * f + 3}, got {n}")
    d2 = np.zeros((n, n))
    with np.errstate(over="ignore"):  # far-away updates give inf distances, never NaN
        for i in range(n):
            for j in range(i + 1, n):
                d2[i, j] = d2[j, i] = sum(
                    float(np.sum((arrays[i][k] - arrays[j][k]) ** 2)) for k in arrays[i]
                )
    closest = n - f - 2
    return np.array([np.sort(np.delete(d2[i], i))[:closest].sum() for i in range(n)])


def _stack(arrays: list[Arrays], name: str) -> np.ndarray:
    return np.stack([a[name] for a in arrays])


def _check_f(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"f (the Byzantine updates to tolerate) must be an integer >= 0, got {f!r}")
