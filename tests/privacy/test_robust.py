"""Byzantine-robust aggregation: hand-computed values, robustness properties, refusals."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.robust import (
    ROBUST_METHODS,
    aggregate_robust,
    check_strategy,
    coordinate_median,
    krum,
    krum_scores,
    min_updates,
    multi_krum,
    trimmed_mean,
)
from privacy.strategies import ClientResult, ServerHParams, ServerState, aggregate_plain, server_update


def ups(*rows):
    """One update per row: {"w": the row}."""
    return [{"w": np.array(r, dtype=np.float64)} for r in rows]


def test_names():
    assert ROBUST_METHODS == ("none", "krum", "multikrum", "trimmed_mean", "median")


# ----------------------------------------------------------------------------- known answers


def test_krum_scores_by_hand():
    # n=5, f=1: each score sums the 2 smallest squared distances to the others
    updates = ups([0.0], [1.0], [2.0], [10.0], [100.0])
    np.testing.assert_array_equal(krum_scores(updates, 1), [1 + 4, 1 + 1, 1 + 4, 64 + 81, 8100 + 9604])
    update, chosen = krum(updates, 1)
    assert chosen == 1 and update["w"].tolist() == [1.0]


def test_krum_distance_spans_all_tensors():
    # squared distances add over tensors: 0–1 is 1+1, 0–2 is 9, 1–2 is 4+1
    updates = [
        {"a": np.array([0.0]), "b": np.array([0.0])},
        {"a": np.array([1.0]), "b": np.array([1.0])},
        {"a": np.array([3.0]), "b": np.array([0.0])},
    ]
    np.testing.assert_array_equal(krum_scores(updates, 0), [2, 2, 5])  # f=0: the closest other only
    assert krum(updates, 0)[1] == 0  # a tie goes to the lower index


def test_multi_krum_by_hand():
    updates = ups([0.0, 0.0], [1.0, 2.0], [2.0, 0.0], [50.0, 50.0], [-40.0, 60.0])
    # squared distances 0–1: 5, 0–2: 4, 1–2: 5, 1–3: 4705, 2–3: 4804, 1–4: 5045, 0–4: 5200
    np.testing.assert_array_equal(krum_scores(updates, 1), [4 + 5, 5 + 5, 4 + 5, 4705 + 4804, 5045 + 5200])
    avg, chosen = multi_krum(updates, 1, 3)
    assert chosen == (0, 2, 1)  # best first, the tie in index order
    np.testing.assert_allclose(avg["w"], [1.0, 2 / 3])
    _, default = multi_krum(updates, 1)  # m = n - f = 4
    assert default == (0, 2, 1, 3)


def test_trimmed_mean_by_hand():
    updates = ups([1.0, -50.0], [2.0, 0.0], [3.0, 0.0], [4.0, 1.0], [100.0, 2.0])
    np.testing.assert_allclose(trimmed_mean(updates, 1)["w"], [3.0, 1 / 3])
    np.testing.assert_allclose(trimmed_mean(updates, 2)["w"], [3.0, 0.0])
    np.testing.assert_allclose(trimmed_mean(updates, beta=0.2)["w"], [3.0, 1 / 3])  # ⌊0.2·5⌋ = 1
    np.testing.assert_allclose(trimmed_mean(updates, beta=0.1)["w"], [22.0, -9.4])  # trims nothing


def test_median_by_hand():
    assert coordinate_median(ups([1.0], [2.0], [3.0], [4.0], [100.0]))["w"].tolist() == [3.0]
    assert coordinate_median(ups([1.0], [2.0], [3.0], [10.0]))["w"].tolist() == [2.5]
    two = [
        {"a": np.array([[1.0, 9.0]]), "b": np.array(5.0)},
        {"a": np.array([[3.0, 1.0]]), "b": np.array(7.0)},
    ]
    out = coordinate_median([*two, {"a": np.array([[2.0, 2.0]]), "b": np.array(-1.0)}])
    assert out["a"].tolist() == [[2.0, 2.0]] and out["b"].shape == () and out["b"] == 5.0


def test_results_are_float64_and_inputs_untouched():
    updates = [{"w": np.array([1.0, 2.0], np.float32)} for _ in range(3)]
    for out in (coordinate_median(updates), trimmed_mean(updates, 1), multi_krum(updates, 0)[0]):
        assert out["w"].dtype == np.float64
    assert updates[0]["w"].dtype == np.float32


def test_min_updates():
    assert min_updates("none", 0) == 1
    assert min_updates("krum", 2) == 7
    assert min_updates("multikrum", 1) == 5
    assert min_updates("multikrum", 1, 6) == 7  # m + f
    assert min_updates("trimmed_mean", 2) == 5
    assert min_updates("median", 0) == 1


# ----------------------------------------------------------------------------- properties

finite = st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    f=st.integers(0, 3),
    extra=st.integers(1, 4),
    dims=st.integers(1, 4),
    data=st.data(),
)
def test_byzantine_values_stay_within_the_honest_range(f, extra, dims, data):
    """Median and trimmed mean: f arbitrary updates cannot leave the honest values' range."""
    honest_n = f + extra  # n = honest_n + f > 2f
    honest = np.array(
        data.draw(
            st.lists(
                st.lists(st.floats(-10, 10), min_size=dims, max_size=dims),
                min_size=honest_n,
                max_size=honest_n,
            )
        )
    )
    byz = [data.draw(st.lists(finite, min_size=dims, max_size=dims)) for _ in range(f)]
    order = data.draw(st.permutations(range(honest_n + f)))
    rows = [*honest.tolist(), *byz]
    updates = ups(*[rows[i] for i in order])
    lo, hi = honest.min(axis=0), honest.max(axis=0)
    eps = 1e-12 * max(1.0, float(np.abs(honest).max()))
    for out in (coordinate_median(updates, f), trimmed_mean(updates, f)):
        assert np.all(out["w"] >= lo - eps) and np.all(out["w"] <= hi + eps)


@settings(max_examples=100, deadline=None)
@given(
    f=st.integers(0, 3),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
    same_point=st.booleans(),
)
def test_krum_selects_honest_updates_against_far_attackers(f, extra, seed, same_point):
    rng = np.random.default_rng(seed)
    n = 2 * f + 3 + extra
    honest = rng.normal(0.0, 0.1, (n - f, 5))
    far = rng.normal(0.0, 1.0, (f, 5))
    far = far / np.linalg.norm(far, axis=1, keepdims=True) * rng.uniform(1e3, 1e12, (f, 1))
    if same_point and f:  # colluding attackers all send one vector
        far[:] = far[0]
    order = rng.permutation(n)
    rows = np.concatenate([honest, far])[order]
    is_honest = order < n - f
    updates = ups(*rows)
    update, chosen = krum(updates, f)
    assert is_honest[chosen]
    np.testing.assert_array_equal(update["w"], rows[chosen])
    avg, kept = multi_krum(updates, f)  # m = n - f: exactly the honest ones
    assert sorted(kept) == sorted(np.flatnonzero(is_honest).tolist())
    np.testing.assert_allclose(avg["w"], honest.mean(axis=0), atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(3, 8), seed=st.integers(0, 2**32 - 1))
def test_multi_krum_of_all_with_no_attacker_is_the_mean(n, seed):
    rng = np.random.default_rng(seed)
    updates = [{"a": rng.normal(size=(2, 3)), "b": rng.normal(size=4)} for _ in range(n)]
    avg, kept = multi_krum(updates, 0, n)
    assert sorted(kept) == list(range(n))
    plain = aggregate_plain([ClientResult(u, 7) for u in updates], "fedavg")  # equal weights
    for k in ("a", "b"):
        np.testing.assert_allclose(avg[k], np.mean([u[k] for u in updates], axis=0), atol=1e-12)
        np.testing.assert_allclose(avg[k], plain[k], atol=1e-12)


def test_huge_finite_attackers_give_no_nan():
    updates = ups([0.0], [0.1], [0.2], [1e300], [-1e300])
    assert np.isinf(krum_scores(updates, 1)[3:]).all()
    assert krum(updates, 1)[1] == 1
    assert coordinate_median(updates, 2)["w"].tolist() == [0.1]
    assert trimmed_mean(updates, 2)["w"].tolist() == [0.1]


# ----------------------------------------------------------------------------- with the strategies


def test_none_is_the_strategys_weighted_mean():
    results = [ClientResult({"w": np.array([1.0])}, 1), ClientResult({"w": np.array([4.0])}, 2)]
    out = aggregate_robust(results, "fedavg", "none")
    assert (
        out.selected is None and out.update["w"].tolist() == aggregate_plain(results, "fedavg")["w"].tolist()
    )


def test_robust_rules_ignore_example_counts():
    results = [
        ClientResult({"w": np.array([0.0])}, 1),
        ClientResult({"w": np.array([1.0])}, 1),
        ClientResult({"w": np.array([1e6])}, 1_000_000),  # claims nearly every example
    ]
    assert aggregate_robust(results, "fedprox", "median", 1).update["w"].tolist() == [1.0]
    mk = aggregate_robust(results, "fedavg", "multikrum", 0, 2)
    assert mk.selected == (0, 1) and mk.update["w"].tolist() == [0.5]
    assert aggregate_robust(results, "fedavg", "krum").selected == (0,)


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam", "fedyogi"])
def test_server_optimisers_apply_on_top_of_the_robust_average(strategy):
    results = [ClientResult({"w": np.array([v])}, 5) for v in (0.1, 0.3, 1e9)]
    robust = aggregate_robust(results, strategy, "median", 1).update
    assert robust["w"].tolist() == [0.3]
    hp = ServerHParams()
    w0 = {"w": np.array([1.0], np.float32)}
    got, state = server_update(strategy, w0, robust, ServerState(), hp)
    want, _ = server_update(strategy, w0, {"w": np.array([0.3])}, ServerState(), hp)
    assert got["w"].tolist() == want["w"].tolist() and state.strategy == strategy


# ----------------------------------------------------------------------------- refusals


def test_fednova_is_refused():
    results = [ClientResult({"w": np.array([v])}, 5, 3) for v in (0.1, 0.2, 0.3)]
    with pytest.raises(ValueError, match="fednova"):
        aggregate_robust(results, "fednova", "median", 1)
    with pytest.raises(ValueError, match="fednova"):
        check_strategy("fednova", "krum")
    check_strategy("fednova", "none")  # plain FedNova is fine
    assert aggregate_robust(results, "fednova", "none").selected is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: krum(ups([0.0], [1.0], [2.0], [3.0]), 1), r"n >= 2f\+3 = 5, got 4"),
        (lambda: krum_scores(ups([0.0], [1.0]), 0), r"n >= 2f\+3 = 3, got 2"),
        (lambda: multi_krum(ups([0.0], [1.0], [2.0], [3.0], [4.0]), 1, 5), r"m in \[1, n - f\] = \[1, 4\]"),
        (lambda: multi_krum(ups([0.0], [1.0], [2.0]), 0, 0), r"m in \[1, n - f\]"),
        (lambda: trimmed_mean(ups([0.0], [1.0], [2.0], [3.0]), 2), r"n > 2k = 4, got 4"),
        (lambda: trimmed_mean(ups([0.0], [1.0]), 1, beta=0.1), "exactly one of f"),
        (lambda: trimmed_mean(ups([0.0], [1.0])), "exactly one of f"),
        (lambda: trimmed_mean(ups([0.0], [1.0]), beta=0.5), r"beta must be in \[0, 0.5\)"),
        (lambda: coordinate_median(ups([0.0], [1.0]), 1), r"n > 2f = 2, got 2"),
        (lambda: coordinate_median(ups([0.0], [1.0], [2.0]), -1), "integer >= 0"),
        (lambda: coordinate_median(ups([0.0], [1.0], [2.0]), True), "integer >= 0"),
        (lambda: coordinate_median([]), "non-empty sequence"),
        (lambda: coordinate_median({"w": np.zeros(1)}), "non-empty sequence"),
        (lambda: coordinate_median([{"w": np.zeros(2)}, {"w": np.zeros(3)}]), "shape"),
        (lambda: coordinate_median([{"w": np.zeros(2)}, {"v": np.zeros(2)}]), "names differ"),
        (lambda: coordinate_median([{"w": np.array([np.nan])}]), "NaN or inf"),
        (lambda: coordinate_median([{"w": np.array([1, 2])}]), "only floating-point"),
        (
            lambda: aggregate_robust([ClientResult({"w": np.zeros(1)}, 1)], "fedavg", "bulyan"),
            "unknown robust",
        ),
        (
            lambda: aggregate_robust([ClientResult({"w": np.zeros(1)}, 1)], "fedsgd", "median"),
            "unknown strategy",
        ),
        (
            lambda: aggregate_robust([ClientResult({"w": np.zeros(1)}, 1)] * 3, "fedavg", "median", 0, 2),
            "Multi-Krum",
        ),
    ],
)
def test_refusals(call, match):
    with pytest.raises(ValueError, match=match):
        call()
