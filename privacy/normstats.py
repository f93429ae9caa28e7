"""Pool LeRobot normalization statistics across sites, in plain or secure-sum form.

A site's stats follow ``lerobot.datasets.compute_stats``: per feature key a dict with
``count`` (shape (1,)), ``mean``, ``std``, ``min``, ``max`` (shape (6,), or (3, 1, 1) for
images) and optionally quantiles ``q01``, ``q10``, ... Pooling:

- mean = Σ n_i μ_i / N; variance from second moments, Σ n_i (σ_i² + μ_i²) / N − mean²
  (population std, as lerobot); exact up to rounding, which can cancel when |mean| >> std;
- quantiles = Σ n_i q_i / N, lerobot's own approximation (``aggregate_feature_stats``);
- min = min of mins, max = max of maxes.

Secure aggregation only yields sums, so :func:`to_moments` turns a site's stats into a flat
dict of summable arrays (``"<feature>/count"``, ``"<feature>/sum"``, ``"<feature>/sumsq"``,
``"<feature>/sum_q01"``, ...) and :func:`from_moments` turns the summed dict back into stats.
Min and max are *not* sums: they disclose one site's most extreme frame. In secure modes
they are replaced by ``mean ± k·std`` (:func:`bounds_from_moments`, k=3 by default, which
holds 99.7 % of a Gaussian and all of a uniform's range, since uniform bounds sit at
mean ± √3·std). Values beyond the bounds then normalise slightly outside [−1, 1] under
MIN_MAX; clip them, or use public joint limits instead, where a policy cannot tolerate it.
Counts weight every frame equally; for images that is exact only when all sites sampled
images with the same pixel count. No DP noise is added here: the pooled stats are a
separate, aggregate-only release.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from privacy.strategies import sum_arrays

FeatureStats = Mapping[str, np.ndarray]
DatasetStats = Mapping[str, FeatureStats]
DEFAULT_K = 3.0
_MOMENTS = ("count", "sum", "sumsq")
_Q_PREFIX = "sum_"


def to_moments(stats: DatasetStats) -> dict[str, np.ndarray]:
    """A site's stats as summable float64 arrays: n, n·μ, n·(σ² + μ²) and n·q per feature."""
    out: dict[str, np.ndarray] = {}
    for feature, fs in _checked_features(stats):
        count, mean, std = _count(feature, fs), fs["mean"], fs["std"]
        out[f"{feature}/count"] = np.array([count], dtype=np.float64)
        out[f"{feature}/sum"] = count * mean
        out[f"{feature}/sumsq"] = count * (std**2 + mean**2)
        for q in _quantile_keys(fs):
            out[f"{feature}/{_Q_PREFIX}{q}"] = count * fs[q]
    return out


def from_moments(
    summed: Mapping[str, np.ndarray],
    mins: Mapping[str, np.ndarray],
    maxs: Mapping[str, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """Pooled lerobot-style stats from summed moments and the chosen min/max per feature."""
    pooled = {}
    for feature, moments in _split(summed).items():
        n, mean, std = _mean_std(feature, moments)
        fs = {
            "min": _bound(mins, "mins", feature, mean.shape),
            "max": _bound(maxs, "maxs", feature, mean.shape),
            "mean": mean,
            "std": std,
            "count": np.array([round(n)], dtype=np.int64),
        }
        for key, total in moments.items():
            if key.startswith(_Q_PREFIX):
                fs[key.removeprefix(_Q_PREFIX)] = total / n
        pooled[feature] = fs
    for name, bounds in (("mins", mins), ("maxs", maxs)):
        if extra := bounds.keys() - pooled.keys():
            raise ValueError(f"{name} has features with no moments: {sorted(extra)}")
    return pooled


def bounds_from_moments(
    summed: Mapping[str, np.ndarray], k: float = DEFAULT_K
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(mins, maxs) = mean ∓ k·std per feature: the secure-mode stand-in for extremes."""
    if not (np.isfinite(k) and k > 0):
        raise ValueError(f"k must be finite and > 0, got {k}")
    mins, maxs = {}, {}
    for feature, moments in _split(summed).items():
        _, mean, std = _mean_std(feature, moments)
        mins[feature], maxs[feature] = mean - k * std, mean + k * std
    return mins, maxs


def aggregate_stats(sites: Sequence[DatasetStats]) -> dict[str, dict[str, np.ndarray]]:
    """Plain mode: pooled stats of every site, through the same moment form as secure mode."""
    if not sites:
        raise ValueError("no site stats to aggregate")
    features = set(sites[0])
    for i, site in enumerate(sites[1:], start=1):
        if set(site) != features:
            raise ValueError(
                f"site {i} has features {sorted(site)}, site 0 has {sorted(features)}; "
                "all sites must describe the same features"
            )
    summed = sum_arrays([to_moments(s) for s in sites], "site moment set")
    mins = {f: np.min(np.stack([np.asarray(s[f]["min"]) for s in sites]), axis=0) for f in features}
    maxs = {f: np.max(np.stack([np.asarray(s[f]["max"]) for s in sites]), axis=0) for f in features}
    return from_moments(summed, mins, maxs)


def _checked_features(stats: DatasetStats) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(feature, float64 stats) pairs, validated: shapes agree, finite, std >= 0."""
    if not isinstance(stats, Mapping) or not stats:
        raise ValueError("stats must be a non-empty mapping of feature -> stats")
    checked = []
    for feature, fs in stats.items():
        if not isinstance(feature, str) or not feature:
            raise ValueError(f"feature names must be non-empty strings, got {feature!r}")
        if missing := {"count", "mean", "std", "min", "max"} - fs.keys():
            raise ValueError(f"feature {feature!r} lacks {sorted(missing)}")
        arrays = {key: np.asarray(value, dtype=np.float64) for key, value in fs.items()}
        shape = arrays["mean"].shape
        for key, arr in arrays.items():
            if key != "count" and arr.shape != shape:
                raise ValueError(f"feature {feature!r}: {key} has shape {arr.shape}, mean has {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"feature {feature!r}: {key} contains NaN or inf")
        if (arrays["std"] < 0).any():
            raise ValueError(f"feature {feature!r}: std is negative")
        checked.append((feature, arrays))
    return checked


def _count(feature: str, fs: Mapping[str, np.ndarray]) -> float:
    count = np.asarray(fs["count"]).reshape(-1)
    if count.shape != (1,) or not count[0] >= 1:
        raise ValueError(f"feature {feature!r}: count must be one number >= 1, got {count}")
    return float(count[0])


def _quantile_keys(fs: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(k for k in fs if k.startswith("q") and k[1:].isdigit())


def _split(summed: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"feat/moment": arr}`` -> ``{"feat": {"moment": arr}}``, checked for completeness."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in summed.items():
        feature, sep, moment = key.rpartition("/")
        if not sep or not feature or not (moment in _MOMENTS or moment.startswith(_Q_PREFIX)):
            raise ValueError(f"unexpected moment key {key!r}")
        arr = np.asarray(value, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"moment {key!r} contains NaN or inf")
        grouped.setdefault(feature, {})[moment] = arr
    if not grouped:
        raise ValueError("no moments given")
    for feature, moments in grouped.items():
        if missing := set(_MOMENTS) - moments.keys():
            raise ValueError(f"feature {feature!r} lacks moments {sorted(missing)}")
    return grouped


def _mean_std(feature: str, moments: Mapping[str, np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    """(N, mean, population std) from summed moments; rounding-level negative variance → 0."""
    count = moments["count"].reshape(-1)
    if count.shape != (1,) or not count[0] > 0:
        raise ValueError(f"feature {feature!r}: summed count must be one number > 0, got {count}")
    n = float(count[0])
    mean = moments["sum"] / n
    second = moments["sumsq"] / n
    if mean.shape != second.shape:
        raise ValueError(f"feature {feature!r}: sum and sumsq shapes differ")
    var = second - mean**2
    if (var < -1e-6 * np.maximum(second, 1e-12)).any():
        raise ValueError(f"feature {feature!r}: moments are inconsistent (negative variance)")
    return n, mean, np.sqrt(np.maximum(var, 0.0))


def _bound(bounds: Mapping[str, np.ndarray], name: str, feature: str, shape: tuple[int, ...]) -> np.ndarray:
    if feature not in bounds:
        raise ValueError(f"{name} has no entry for feature {feature!r}")
    arr = np.asarray(bounds[feature], dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name}[{feature!r}] has shape {arr.shape}, mean has {shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}[{feature!r}] contains NaN or inf")
    return arr
