"""Pooling of LeRobot normalization stats: exact against the pooled data and against lerobot."""

import math

import numpy as np
import pytest

from privacy.normstats import (
    aggregate_stats,
    bounds_from_moments,
    from_moments,
    to_moments,
)
from privacy.strategies import sum_arrays

STATE, IMAGE = "observation.state", "observation.images.top"


def site_arrays(seed=0):
    """Three sites' raw data with different sizes, offsets and scales."""
    rng = np.random.default_rng(seed)
    sites = []
    for n, loc, scale in ((40, 0.0, 1.0), (7, 30.0, 0.2), (113, -5.0, 4.0)):
        sites.append(
            {
                STATE: rng.normal(loc, scale, size=(n, 6)),
                IMAGE: rng.uniform(0, 1, size=(n, 3, 4, 5)) * scale,
            }
        )
    return sites


def numpy_stats(data):
    """lerobot-shaped stats computed directly with numpy (images per channel, (3, 1, 1))."""
    state, image = data[STATE], data[IMAGE]
    img_axes = (0, 2, 3)

    def img(f):
        return f(image, axis=img_axes).reshape(3, 1, 1)

    return {
        STATE: {
            "count": np.array([len(state)]),
            "mean": state.mean(0),
            "std": state.std(0),
            "min": state.min(0),
            "max": state.max(0),
        },
        IMAGE: {
            "count": np.array([len(image)]),
            "mean": img(np.mean),
            "std": img(np.std),
            "min": img(np.min),
            "max": img(np.max),
        },
    }


def pooled(sites):
    return {key: np.concatenate([s[key] for s in sites]) for key in (STATE, IMAGE)}


def test_plain_aggregation_equals_stats_of_pooled_data():
    sites = site_arrays()
    result = aggregate_stats([numpy_stats(s) for s in sites])
    expected = numpy_stats(pooled(sites))
    for feature in (STATE, IMAGE):
        assert result[feature]["count"].tolist() == expected[feature]["count"].tolist() == [160]
        for key in ("mean", "std", "min", "max"):
            assert result[feature][key].shape == expected[feature][key].shape
            np.testing.assert_allclose(result[feature][key], expected[feature][key], rtol=0, atol=1e-9)


def test_matches_lerobot_aggregate_stats_including_quantiles():
    compute_stats = pytest.importorskip("lerobot.datasets.compute_stats")
    sites = site_arrays(seed=1)

    def lerobot_stats(data):
        image = compute_stats.get_feature_stats(data[IMAGE], axis=(0, 2, 3), keepdims=True)
        return {
            STATE: compute_stats.get_feature_stats(data[STATE], axis=0, keepdims=False),
            IMAGE: {k: v if k == "count" else np.squeeze(v, axis=0) for k, v in image.items()},
        }

    stats = [lerobot_stats(s) for s in sites]
    ours = aggregate_stats(stats)
    theirs = compute_stats.aggregate_stats(stats)
    assert set(theirs) == set(ours)
    for feature, ref in theirs.items():
        assert set(ours[feature]) == set(ref)
        assert any(k.startswith("q") for k in ref)  # quantiles are covered
        for key, value in ref.items():
            np.testing.assert_allclose(ours[feature][key], value, rtol=0, atol=1e-9, err_msg=key)


def test_secure_path_uses_only_sums_and_bounds_from_moments():
    sites = site_arrays(seed=2)
    moments = [to_moments(numpy_stats(s)) for s in sites]
    # pairwise masks cancel in the sum: the aggregator only learns the total
    rng = np.random.default_rng(3)
    masks = {k: rng.normal(scale=1e3, size=(3, *v.shape)) for k, v in moments[0].items()}
    for k in masks:
        masks[k] -= masks[k].mean(axis=0)
    masked = [{k: v + masks[k][i] for k, v in m.items()} for i, m in enumerate(moments)]
    summed = sum_arrays(masked)
    mins, maxs = bounds_from_moments(summed, k=2.5)
    result = from_moments(summed, mins, maxs)
    expected = numpy_stats(pooled(sites))
    for feature in (STATE, IMAGE):
        assert result[feature]["count"].tolist() == [160]
        mean, std = expected[feature]["mean"], expected[feature]["std"]
        np.testing.assert_allclose(result[feature]["mean"], mean, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result[feature]["std"], std, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result[feature]["min"], mean - 2.5 * std, rtol=0, atol=1e-8)
        np.testing.assert_allclose(result[feature]["max"], mean + 2.5 * std, rtol=0, atol=1e-8)
        # the true extremes never enter the secure path
        assert not np.allclose(result[feature]["min"], expected[feature]["min"])


def test_moments_form():
    stats = {STATE: {"count": np.array([4]), "mean": np.array([1.0, -2.0]), "std": np.array([3.0, 0.0])}}
    stats[STATE] |= {"min": np.array([-5.0, -2.0]), "max": np.array([6.0, -2.0])}
    m = to_moments(stats)
    assert set(m) == {f"{STATE}/count", f"{STATE}/sum", f"{STATE}/sumsq"}
    np.testing.assert_array_equal(m[f"{STATE}/count"], [4.0])
    np.testing.assert_array_equal(m[f"{STATE}/sum"], [4.0, -8.0])
    np.testing.assert_array_equal(m[f"{STATE}/sumsq"], [40.0, 16.0])  # 4·(9+1), 4·(0+4)


def valid_site():
    return numpy_stats(site_arrays()[0])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s[STATE].update(std=np.ones(5)), "shape"),
        (lambda s: s[STATE].update(mean=np.full(6, math.nan)), "NaN"),
        (lambda s: s[STATE].update(std=-np.ones(6)), "negative"),
        (lambda s: s[STATE].update(count=np.array([0])), "count"),
        (lambda s: s[STATE].pop("max"), "lacks"),
    ],
)
def test_site_stats_validation(mutate, message):
    bad = valid_site()
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        aggregate_stats([valid_site(), bad])


def test_sites_must_agree_on_features_and_quantiles():
    other = valid_site()
    del other[IMAGE]
    with pytest.raises(ValueError, match="same features"):
        aggregate_stats([valid_site(), other])
    with_q = valid_site()
    with_q[STATE]["q50"] = with_q[STATE]["mean"]
    with pytest.raises(ValueError, match="names differ"):
        aggregate_stats([valid_site(), with_q])
    with pytest.raises(ValueError, match="no site"):
        aggregate_stats([])


def test_from_moments_validation():
    summed = to_moments(valid_site())
    mins, maxs = bounds_from_moments(summed)
    with pytest.raises(ValueError, match="no entry"):
        from_moments(summed, {STATE: mins[STATE]}, maxs)
    with pytest.raises(ValueError, match="no moments"):
        from_moments(summed, mins | {"extra": np.zeros(1)}, maxs)
    with pytest.raises(ValueError, match="shape"):
        from_moments(summed, mins | {STATE: np.zeros(2)}, maxs)
    inconsistent = summed | {f"{STATE}/sumsq": np.zeros(6)}
    with pytest.raises(ValueError, match="negative variance"):
        from_moments(inconsistent, mins, maxs)
    with pytest.raises(ValueError, match="lacks moments"):
        bounds_from_moments({f"{STATE}/count": np.array([3.0])})
    with pytest.raises(ValueError, match="unexpected moment key"):
        bounds_from_moments(summed | {"nofeature": np.zeros(1)})
    with pytest.raises(ValueError, match="k must be"):
        bounds_from_moments(summed, k=0.0)
