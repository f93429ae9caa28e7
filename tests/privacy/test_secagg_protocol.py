"""End-to-end SecAgg+ rounds: exact sums under dropouts, the sparse graph, parameter checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    SecAggParams,
    ThresholdError,
    quantization_step,
)
from privacy.secagg.prg import CHUNK_WORDS
from privacy.secagg.simulate import simulate_round

ROUND = "study-7/round-3"
PHASES = ("advert", "shares", "masked", "unmask")


@st.composite
def scenarios(draw: st.DrawFn, max_n: int = 8, sparse: bool = False) -> dict:
    n = draw(st.integers(2, max_n), label="n")
    neighbours = draw(st.integers(2, max(2, n - 2)), label="k") if sparse else None
    probe = SecAggParams(tuple(f"s{i}" for i in range(n)), 1, 1.0, neighbours=neighbours)
    m = probe.group_size
    t = draw(st.integers(m // 2 + 1, m), label="t")
    length = draw(st.integers(1, 64), label="length")
    # mostly at most m - t drops (the round must complete), sometimes more (it must fail);
    # fate 0 = stays, 1..4 = drops just before advert / shares / masked input / unmask
    max_drops = n if draw(st.integers(0, 4), label="mode") == 4 else m - t
    drops = draw(st.integers(0, max_drops), label="drops")
    order = draw(st.permutations(range(n)), label="who")
    phases = draw(st.lists(st.integers(1, 4), min_size=drops, max_size=drops), label="when")
    fate = [0] * n
    for who, when in zip(order, phases, strict=False):
        fate[who] = when
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    pre = draw(st.lists(st.booleans(), min_size=n, max_size=n), label="precompute")
    return {"n": n, "t": t, "length": length, "fate": fate, "seed": seed, "k": neighbours, "pre": pre}


def _run(sc: dict) -> None:
    sites = tuple(f"site-{i}" for i in range(sc["n"]))
    params = SecAggParams(sites, sc["length"], clip=1.5, threshold=sc["t"], neighbours=sc["k"])
    rng = np.random.default_rng(sc["seed"])
    floats = {s: rng.uniform(-2, 2, sc["length"]) for s in sites}
    inputs = {s: params.quantize(floats[s]) for s in sites}
    drops: dict[str, list[str]] = {p: [] for p in PHASES}
    for s, f in zip(sites, sc["fate"], strict=True):
        if f:
            drops[PHASES[f - 1]].append(s)
    u1 = [s for s in sites if s not in drops["advert"]]
    u2 = [s for s in u1 if s not in drops["shares"]]
    u3 = [s for s in u2 if s not in drops["masked"]]
    u4 = [s for s in u3 if s not in drops["unmask"]]
    graph = params.graph(ROUND)
    group = {s: graph[s] | {s} for s in sites}
    t = params.threshold
    feasible = (
        min(len(u1), len(u2), len(u3), len(u4)) >= t
        and all(len(group[s] & set(u1)) >= t for s in u2)  # share_keys
        and all(len(group[s] & set(u2)) >= t for s in u3)  # masked_input
        and all(len(group[s] & set(u3)) >= t for s in u4)  # unmask
        and all(len(group[s] & set(u4)) >= t for s in u2)  # finish: b or s_sk shares
    )
    try:
        total, survivors = simulate_round(
            params,
            ROUND,
            inputs,
            drop_before_advert=drops["advert"],
            drop_before_shares=drops["shares"],
            drop_before_masked=drops["masked"],
            drop_before_unmask=drops["unmask"],
            precompute=[s for s, p in zip(sites, sc["pre"], strict=True) if p],
        )
    except ThresholdError:
        assert not feasible
        event("too few sites: ThresholdError")
        return
    event(f"exact sum, {sc['n'] - len(u3)} dropped before masking, {len(u3) - len(u4)} after")
    assert feasible
    assert survivors == tuple(sorted(u3))
    expected = np.zeros(sc["length"], np.uint64)
    for s in u3:
        expected += inputs[s]
    assert total.dtype == np.uint32
    assert np.array_equal(total, expected)  # exact, and no wrap-around
    deq = params.dequantize_sum(total, len(u3))
    plain = sum(np.clip(floats[s], -1.5, 1.5) for s in u3)
    step = quantization_step(1.5, params.n_sites)
    assert np.abs(deq - plain).max() <= len(u3) * step


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_secagg_sum_is_exact_under_dropouts(sc: dict) -> None:
    _run(sc)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_secagg_sum_is_exact_under_dropouts_1000_trials(sc: dict) -> None:
    _run(sc)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_n=12, sparse=True))
def test_secagg_plus_sparse_graph_sum_is_exact(sc: dict) -> None:
    _run(sc)


def test_no_dropout_round_and_vector_spanning_chunks() -> None:
    sites = ("a", "b", "c")
    params = SecAggParams(sites, CHUNK_WORDS + 3, clip=1.0)
    rng = np.random.default_rng(0)
    inputs = {s: params.quantize(rng.normal(size=CHUNK_WORDS + 3)) for s in sites}
    total, survivors = simulate_round(params, ROUND, inputs, drop_before_masked=["b"])
    assert survivors == ("a", "c")
    assert np.array_equal(total, inputs["a"] + inputs["c"])


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_sparse_graph_is_symmetric_regular_and_deterministic(k: int) -> None:
    params = SecAggParams(tuple(f"s{i:02d}" for i in range(20)), 4, 1.0, neighbours=k)
    g = params.graph(ROUND)
    assert g == params.graph(ROUND)
    assert g != params.graph("another round")
    deg = 2 * -(-k // 2)
    assert params.group_size == deg + 1
    for s, nb in g.items():
        assert len(nb) == deg and s not in nb
        assert all(s in g[o] for o in nb)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 2}, "between 3 and 4"),
        ({"threshold": 5}, "between 3 and 4"),
        ({"sites": ("a",)}, "at least 2"),
        ({"sites": ("a", "a", "b")}, "unique"),
        ({"vector_length": 0}, "vector_length"),
        ({"clip": 0.0}, "clip"),
        ({"neighbours": 1}, "neighbours"),
    ],
)
def test_params_are_validated(kwargs: dict, match: str) -> None:
    base = {"sites": ("a", "b", "c", "d"), "vector_length": 8, "clip": 1.0}
    with pytest.raises(ValueError, match=match):
        SecAggParams(**{**base, **kwargs})
