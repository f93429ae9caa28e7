"""Encodings of secure sums: pre-weighted updates (quantized) and statistics moments (exact limbs)."""

import numpy as np
import pytest

from privacy.normstats import aggregate_stats, bounds_from_moments, from_moments, to_moments
from privacy.secagg import SecAggParams
from privacy.secagg.simulate import simulate_round
from privacy.secure_vector import (
    EncodingError,
    UpdateEncoding,
    decode_moments,
    encode_moments,
    layout_from,
)
from privacy.strategies import ClientResult, aggregate, aggregate_plain, client_contribution

RNG = np.random.default_rng(7)


def _updates(n):
    return [
        {"a.weight": RNG.normal(0, 0.01, (4, 3)).astype(np.float32), "b.bias": RNG.normal(0, 0.01, 5)}
        for _ in range(n)
    ]


@pytest.mark.parametrize("strategy", ["fedavg", "fednova"])
def test_secure_update_sum_matches_plain_aggregate(strategy):
    updates, examples = _updates(3), [120, 40, 300]
    enc = UpdateEncoding(layout_from(updates[0]), strategy, clip=0.1, max_weight=1000, max_steps=5)
    params = SecAggParams(("a", "b", "c"), enc.length, enc.clip)
    inputs = {}
    for site, update, n in zip(params.sites, updates, examples, strict=True):
        floats, clipped = enc.encode(update, n, 5)
        assert clipped == 0 and floats.shape == (enc.length,)
        inputs[site] = params.quantize(floats)
    total, survivors = simulate_round(params, "r1", inputs, drop_before_masked=["c"])
    summed, scalars = enc.decode(params.dequantize_sum(total, len(survivors)))
    secure = aggregate(summed, scalars, strategy)
    plain = aggregate_plain(
        [ClientResult(u, n, 5) for u, n in zip(updates[:2], examples[:2], strict=True)], strategy
    )
    for k in plain:
        np.testing.assert_allclose(secure[k], plain[k], atol=1e-7)
    assert scalars["weight"] == pytest.approx(160, rel=1e-6)


def test_weights_above_the_bound_count_as_the_bound_and_layout_is_checked():
    update = _updates(1)[0]
    enc = UpdateEncoding(layout_from(update), "fedavg", clip=1.0, max_weight=10, max_steps=1)
    floats, _ = enc.encode(update, 10_000, 1)
    assert floats[-1] == pytest.approx(1.0)  # clip · min(n, M) / M
    with pytest.raises(EncodingError):
        enc.encode({"a.weight": update["a.weight"]}, 5, 1)
    with pytest.raises(EncodingError):
        enc.encode({**update, "b.bias": np.zeros(6)}, 5, 1)
    with pytest.raises(EncodingError):
        enc.encode({**update, "b.bias": np.full(5, np.nan)}, 5, 1)


def _stats(seed):
    rng = np.random.default_rng(seed)
    state = rng.normal(50, 20, (200 + seed, 6))
    image = rng.random((10, 3, 4, 4))
    return {
        "observation.state": {
            "mean": state.mean(0),
            "std": state.std(0),
            "min": state.min(0),
            "max": state.max(0),
            "count": np.array([len(state)]),
        },
        "observation.images.top": {
            "mean": image.mean((0, 2, 3), keepdims=True)[0],
            "std": image.std((0, 2, 3), keepdims=True)[0],
            "min": image.min((0, 2, 3), keepdims=True)[0],
            "max": image.max((0, 2, 3), keepdims=True)[0],
            "count": np.array([10]),
        },
    }


def test_moments_sum_exactly_through_the_ring():
    sites = [_stats(s) for s in range(3)]
    moments = [to_moments(s) for s in sites]
    layout = layout_from(moments[0])
    params = SecAggParams(("a", "b", "c"), 4 * sum(int(np.prod(s)) for _, s in layout), 1.0)
    inputs = {site: encode_moments(m, layout) for site, m in zip(params.sites, moments, strict=True)}
    total, _ = simulate_round(params, "stats", inputs)
    summed = decode_moments(total, layout)
    for k in summed:
        np.testing.assert_allclose(summed[k], sum(m[k] for m in moments), rtol=1e-9, atol=1e-5)
    pooled = from_moments(summed, *bounds_from_moments(summed))
    plain = aggregate_stats(sites)
    for feature in plain:
        np.testing.assert_allclose(pooled[feature]["mean"], plain[feature]["mean"], rtol=1e-9, atol=1e-7)
        np.testing.assert_allclose(pooled[feature]["std"], plain[feature]["std"], rtol=1e-6, atol=1e-6)


def test_negative_moments_and_range():
    layout = layout_from({"x": np.zeros(3)})
    a, b = (
        encode_moments({"x": np.array([-1.5, 2.0, -1e9])}, layout),
        encode_moments({"x": np.array([0.25, -3.0, 1.0])}, layout),
    )
    np.testing.assert_allclose(decode_moments(a + b, layout)["x"], [-1.25, -1.0, -1e9 + 1.0])
    with pytest.raises(EncodingError):
        encode_moments({"x": np.array([1e20, 0, 0])}, layout)


def _reference_encode(enc: UpdateEncoding, update, n: int, steps: int) -> tuple[np.ndarray, int]:
    """The definition: client_contribution's arrays, flattened in layout order, divided by M."""
    n = int(min(n, enc.max_weight))
    vector, scalars = client_contribution(update, n, steps, enc.strategy)
    m = enc.max_weight
    flat = np.concatenate([np.asarray(vector[k], np.float64).reshape(-1) for k, _ in enc.layout]) / m
    tail = [enc.clip * scalars["weight"] / m]
    if "weighted_steps" in enc.scalars:
        tail.append(enc.clip * scalars["weighted_steps"] / (m * enc.max_steps))
    return np.concatenate([flat, tail]), int(np.count_nonzero(np.abs(flat) > enc.clip))


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fednova"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4"])
def test_encode_equals_the_definition_value_for_value(strategy, dtype):
    rng = np.random.default_rng(3)
    update = {  # sizes across the encoder's chunk edges, a non-contiguous tensor, a scalar
        "z.big": (rng.standard_normal((3, 70_001)) * 0.02).astype(dtype),
        "a.strided": (rng.standard_normal((40, 30)) * 0.02).astype(dtype)[:, ::2],
        "m.scalar": np.asarray(0.5, dtype=dtype),
    }
    enc = UpdateEncoding(layout_from(update), strategy, clip=0.03, max_weight=700, max_steps=9)
    for n in (1, 333, 10_000):
        got, clipped = enc.encode(update, n, 7)
        want, want_clipped = _reference_encode(enc, update, n, 7)
        assert got.dtype == np.float64 and np.array_equal(got, want)
        assert clipped == want_clipped
    assert clipped > 0  # n = 10,000 (counted as 700) pushes values beyond the clip


def test_encode_refuses_integer_and_non_finite_tensors_wherever_they_are():
    update = {"a": np.zeros(200_000, np.float32), "b": np.zeros(3, np.float32)}
    enc = UpdateEncoding(layout_from(update), "fedavg", clip=1.0, max_weight=10, max_steps=1)
    bad = update["a"].copy()
    bad[150_000] = np.inf
    with pytest.raises(EncodingError, match="'a' contains NaN or inf"):
        enc.encode({**update, "a": bad}, 5, 1)
    with pytest.raises(EncodingError, match="'b' has dtype int64"):
        enc.encode({**update, "b": np.zeros(3, np.int64)}, 5, 1)
    with pytest.raises(EncodingError, match="mapping"):
        enc.encode([update["a"]], 5, 1)
    huge = {**update, "b": np.full(3, 1e308)}  # finite, but x n overflows float64
    with pytest.raises(EncodingError, match="'b' contains NaN or inf"):
        enc.encode(huge, 5, 1)
