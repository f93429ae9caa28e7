"""Quantization into Z_2^32 without wrap-around, and dequantization of sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import dequantize_sum, quantization_bits, quantization_step, quantize


@pytest.mark.parametrize(("n", "bits"), [(1, 31), (2, 30), (3, 29), (4, 29), (10, 27), (1000, 21)])
def test_bits(n: int, bits: int) -> None:
    assert quantization_bits(n) == bits


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 4096), clip=st.floats(1e-6, 1e6), beyond=st.floats(1.0, 1e30))
def test_n_inputs_at_the_clip_extremes_do_not_wrap(n: int, clip: float, beyond: float) -> None:
    x = np.array([clip, clip * beyond, -clip, -clip * beyond, 0.0])
    q = quantize(x, clip, n)
    top = 2 ** quantization_bits(n) - 1
    assert q.tolist()[:4] == [top, top, 0, 0]
    wrapped = np.zeros(5, np.uint32)
    for _ in range(min(n, 64)):
        wrapped += q
    wrapped += np.uint32((n - min(n, 64)) % 2**32) * q  # the rest in one (wrapping) step
    exact = q.astype(np.uint64) * n
    assert exact.max() < 2**31
    assert np.array_equal(wrapped.astype(np.uint64), exact)
    total = dequantize_sum(wrapped, clip, n, n)
    assert np.allclose(total[:4], [n * clip, n * clip, -n * clip, -n * clip], rtol=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 64),
    length=st.integers(1, 200),
    clip=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
    stochastic=st.booleans(),
)
def test_dequantized_sum_is_within_n_steps(
    n: int, length: int, clip: float, seed: int, stochastic: bool
) -> None:
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(-2 * clip, 2 * clip, length).astype(np.float32) for _ in range(n)]
    qs = [quantize(x, clip, n, rng if stochastic else None) for x in xs]
    q_sum = np.zeros(length, np.uint32)
    for q in qs:
        q_sum += q
    exact = np.sum([np.clip(x.astype(np.float64), -clip, clip) for x in xs], axis=0)
    err = np.abs(dequantize_sum(q_sum, clip, n, n) - exact)
    step = quantization_step(clip, n)
    assert err.max() <= n * step * (1 + 1e-6)
    if not stochastic:  # round to nearest: half a step per input
        assert err.max() <= n * step / 2 * (1 + 1e-6) + 1e-9 * n * clip


def test_shape_is_kept_and_chunks_are_seamless() -> None:
    x = np.linspace(-1, 1, 200_003).reshape(-1, 1)
    q = quantize(x, 1.0, 5)
    assert q.shape == x.shape and q.dtype == np.uint32
    assert np.all(np.diff(q.ravel().astype(np.int64)) >= 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    x = np.zeros(100_000)
    x[70_000] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(x, 1.0, 3)


def test_huge_finite_values_are_clipped_not_rejected() -> None:
    q = quantize(np.array([1e308, 1e308, -1e308]), 1.0, 3)
    assert q.tolist() == [2**29 - 1, 2**29 - 1, 0]


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_clip_is_rejected(clip: float) -> None:
    with pytest.raises(ValueError):
        quantize(np.zeros(3), clip, 3)


def test_dequantize_checks_counts() -> None:
    with pytest.raises(ValueError):
        dequantize_sum(np.zeros(3, np.uint32), 1.0, 3, 4)


def _reference_quantize(x: np.ndarray, clip: float, n: int) -> np.ndarray:
    """The definition, unchunked: rint((clip(x, -c, c) + c) * scale) in float64."""
    levels = 2 ** quantization_bits(n) - 1
    v = (np.clip(np.asarray(x, dtype=np.float64), -clip, clip) + clip) * (levels / (2.0 * clip))
    return np.rint(v).astype(np.uint32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ">f4", ">f8", np.int16, np.int64])
@pytest.mark.parametrize("n", [1, 2, 10, 1000])
def test_quantize_matches_the_unchunked_definition(dtype: str, n: int) -> None:
    rng = np.random.default_rng(n)
    clip = 3.0 if np.dtype(dtype).kind == "i" else 0.05
    x = (rng.standard_normal(150_007) * clip * 1.3).astype(dtype)
    x[:3] = [clip, -clip, 0]
    assert np.array_equal(quantize(x, clip, n), _reference_quantize(x, clip, n))


@pytest.mark.parametrize("dtype", [np.float16, ">f4", np.float32])
def test_non_finite_values_are_rejected_in_every_float_dtype(dtype: str) -> None:
    x = np.zeros(70_000, dtype=dtype)
    x[69_999] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(x, 1.0, 3)


def test_dequantize_sum_keeps_shape_and_matches_the_formula() -> None:
    clip, n = 0.5, 7
    step = quantization_step(clip, n)
    q = np.random.default_rng(0).integers(0, 2**31, (300, 701), dtype=np.uint32)
    for arr in (q, q[:, ::2], q[0, 0]):
        got = dequantize_sum(arr, clip, n, 3)
        assert np.shape(got) == np.shape(arr) and np.asarray(got).dtype == np.float64
        assert np.array_equal(got, np.asarray(arr, dtype=np.float64) * step - 3 * clip)
