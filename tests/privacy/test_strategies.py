"""Server strategies: hand-computed values, the two halves, secure-sum compatibility."""

import json
import math

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from privacy.strategies import (
    STRATEGIES,
    ClientResult,
    ServerHParams,
    ServerState,
    aggregate,
    aggregate_plain,
    client_contribution,
    server_update,
    sum_contributions,
)


def arr(*values):
    return np.array(values, dtype=np.float64)


def run_rounds(strategy, hparams, w0, deltas):
    weights, state = {"w": w0}, ServerState()
    for d in deltas:
        weights, state = server_update(strategy, weights, {"w": d}, state, hparams)
    return weights["w"], state


def test_registry_names():
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fednova"}


def test_fedavg_weights_by_examples():
    results = [
        ClientResult({"w": arr(1.0, 2.0)}, num_examples=1),
        ClientResult({"w": arr(4.0, -1.0)}, num_examples=3),
    ]
    avg = aggregate_plain(results, "fedavg")
    np.testing.assert_allclose(avg["w"], arr(13 / 4, -1 / 4), rtol=0, atol=1e-15)


def test_client_contribution_is_pre_weighted():
    vec, scalars = client_contribution({"w": arr(1.0, -2.0)}, 4, 2, "fedavg")
    np.testing.assert_array_equal(vec["w"], arr(4.0, -8.0))
    assert scalars == {"weight": 4.0}
    vec, scalars = client_contribution({"w": arr(1.0, -2.0)}, 4, 2, "fednova")
    np.testing.assert_array_equal(vec["w"], arr(2.0, -4.0))
    assert scalars == {"weight": 4.0, "weighted_steps": 8.0}


def test_fednova_normalises_local_steps():
    # p = (1/4, 3/4); Δ/τ: (1, 2) and (1, -1); Σ p Δ/τ = (1, -1/4); τ_eff = 2/4 + 9/4 = 11/4
    results = [
        ClientResult({"w": arr(2.0, 4.0)}, num_examples=1, local_steps=2),
        ClientResult({"w": arr(3.0, -3.0)}, num_examples=3, local_steps=3),
    ]
    nova = aggregate_plain(results, "fednova")
    np.testing.assert_allclose(nova["w"], arr(11 / 4, -11 / 16), rtol=0, atol=1e-15)
    # FedAvg on the same results differs: (11/4, -5/4)
    np.testing.assert_allclose(aggregate_plain(results, "fedavg")["w"], arr(11 / 4, -5 / 4))


def test_fednova_equals_fedavg_when_local_steps_agree():
    rng = np.random.default_rng(0)
    results = [ClientResult({"w": rng.normal(size=5)}, num_examples=n, local_steps=7) for n in (3, 8, 2)]
    np.testing.assert_allclose(
        aggregate_plain(results, "fednova")["w"], aggregate_plain(results, "fedavg")["w"]
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_halves_equal_direct_weighted_mean(strategy):
    rng = np.random.default_rng(1)
    counts = [5, 11, 2]
    updates = [{"a": rng.normal(size=(3, 4)), "b": rng.normal(size=7)} for _ in counts]
    results = [ClientResult(u, n, local_steps=4) for u, n in zip(updates, counts, strict=True)]
    avg = aggregate_plain(results, strategy)
    for name in ("a", "b"):
        direct = np.average(np.stack([u[name] for u in updates]), axis=0, weights=counts)
        np.testing.assert_allclose(avg[name], direct, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("strategy", ["fedavg", "fednova"])
def test_server_needs_only_masked_sums(strategy):
    """Zero-sum masks on every contribution (as pairwise masking adds) leave the result intact."""
    rng = np.random.default_rng(2)
    results = [ClientResult({"w": rng.normal(size=6)}, n, steps) for n, steps in ((4, 1), (9, 3), (1, 10))]
    contributions = [client_contribution(r.update, r.num_examples, r.local_steps, strategy) for r in results]
    masks = rng.normal(scale=1e3, size=(len(results), 6))
    masks -= masks.mean(axis=0)  # Σ masks = 0
    masked = [({"w": v["w"] + m}, s) for (v, s), m in zip(contributions, masks, strict=True)]
    expected = aggregate_plain(results, strategy)["w"]
    np.testing.assert_allclose(
        aggregate(*sum_contributions(masked), strategy)["w"], expected, rtol=1e-9, atol=1e-10
    )
    # no single masked vector reveals its update
    assert not np.allclose(masked[0][0]["w"], contributions[0][0]["w"])


def test_fedavg_and_fedprox_apply_with_server_lr():
    for strategy in ("fedavg", "fedprox", "fednova"):
        w, state = run_rounds(strategy, ServerHParams(server_lr=0.5), arr(1.0, 1.0), [arr(2.0, -4.0)])
        np.testing.assert_array_equal(w, arr(2.0, -1.0))
        assert state.round == 1 and state.m is None and state.momentum is None


def test_fedavgm_momentum_across_two_rounds():
    hp = ServerHParams(server_lr=0.5, momentum=0.9)
    # round 1: m = (1, -2), w = (1, 1) + 0.5 m = (1.5, 0)
    w, state = run_rounds("fedavgm", hp, arr(1.0, 1.0), [arr(1.0, -2.0)])
    np.testing.assert_allclose(w, arr(1.5, 0.0))
    # round 2: m = 0.9 (1, -2) + (0.5, 0.5) = (1.4, -1.3), w = (1.5, 0) + 0.5 m = (2.2, -0.65)
    w, state = run_rounds("fedavgm", hp, arr(1.0, 1.0), [arr(1.0, -2.0), arr(0.5, 0.5)])
    np.testing.assert_allclose(w, arr(2.2, -0.65), rtol=1e-14)
    np.testing.assert_allclose(state.momentum["w"], arr(1.4, -1.3), rtol=1e-14)


ADAPTIVE_HP = ServerHParams(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
D1, D2 = arr(0.1, -0.2), arr(0.3, 0.01)


def test_fedadam_one_and_two_steps():
    # round 1: m = 0.1 Δ; v = 0.99·τ² + 0.01 Δ²
    m1, v1 = (0.01, -0.02), (0.99e-6 + 0.01 * 0.01, 0.99e-6 + 0.01 * 0.04)
    w1 = [0.1 * m / (math.sqrt(v) + 1e-3) for m, v in zip(m1, v1, strict=True)]
    w, state = run_rounds("fedadam", ADAPTIVE_HP, arr(0.0, 0.0), [D1])
    np.testing.assert_allclose(w, w1, rtol=1e-12)
    np.testing.assert_allclose(state.v["w"], v1, rtol=1e-12)
    # round 2: m = 0.9 m1 + 0.1 Δ2; v = 0.99 v1 + 0.01 Δ2²
    m2 = (0.9 * 0.01 + 0.1 * 0.3, 0.9 * -0.02 + 0.1 * 0.01)
    v2 = (0.99 * v1[0] + 0.01 * 0.09, 0.99 * v1[1] + 0.01 * 1e-4)
    w2 = [w + 0.1 * m / (math.sqrt(v) + 1e-3) for w, m, v in zip(w1, m2, v2, strict=True)]
    w, state = run_rounds("fedadam", ADAPTIVE_HP, arr(0.0, 0.0), [D1, D2])
    np.testing.assert_allclose(w, w2, rtol=1e-12)
    np.testing.assert_allclose(state.m["w"], m2, rtol=1e-12)
    assert state.round == 2 and state.strategy == "fedadam"


def test_fedyogi_one_and_two_steps():
    # round 1: τ² < Δ², so v = τ² + 0.01 Δ² (Adam would also decay τ² by 0.99)
    v1 = (1e-6 + 0.01 * 0.01, 1e-6 + 0.01 * 0.04)
    w1 = [0.1 * m / (math.sqrt(v) + 1e-3) for m, v in zip((0.01, -0.02), v1, strict=True)]
    w, state = run_rounds("fedyogi", ADAPTIVE_HP, arr(0.0, 0.0), [D1])
    np.testing.assert_allclose(w, w1, rtol=1e-12)
    np.testing.assert_allclose(state.v["w"], v1, rtol=1e-12)
    # round 2: element 0 has v < Δ² (v grows by 0.01 Δ²), element 1 has v > Δ² (v shrinks)
    v2 = (v1[0] + 0.01 * 0.09, v1[1] - 0.01 * 1e-4)
    m2 = (0.9 * 0.01 + 0.1 * 0.3, 0.9 * -0.02 + 0.1 * 0.01)
    w2 = [w + 0.1 * m / (math.sqrt(v) + 1e-3) for w, m, v in zip(w1, m2, v2, strict=True)]
    w, state = run_rounds("fedyogi", ADAPTIVE_HP, arr(0.0, 0.0), [D1, D2])
    np.testing.assert_allclose(w, w2, rtol=1e-12)
    np.testing.assert_allclose(state.v["w"], v2, rtol=1e-12)


def test_default_server_lr_depends_on_strategy():
    hp = ServerHParams()
    assert hp.lr_for("fedavg") == 1.0
    assert hp.lr_for("fedadam") == hp.lr_for("fedyogi") == 1e-2


def test_new_weights_keep_dtype_and_inputs_are_untouched():
    w0 = {"w": np.ones(3, dtype=np.float32)}
    d = {"w": np.full(3, 0.5, dtype=np.float32)}
    new, _ = server_update("fedavgm", w0, d, ServerState(), ServerHParams())
    assert new["w"].dtype == np.float32
    np.testing.assert_array_equal(w0["w"], np.ones(3))
    np.testing.assert_array_equal(new["w"], np.full(3, 1.5))


@pytest.mark.parametrize("strategy", ["fedavgm", "fedadam", "fedyogi"])
def test_state_checkpoint_round_trip_resumes_identically(strategy, tmp_path):
    rng = np.random.default_rng(3)
    w0 = {"layer.weight": rng.normal(size=(2, 3)), "layer.bias": rng.normal(size=3)}
    deltas = [{k: rng.normal(size=v.shape) for k, v in w0.items()} for _ in range(3)]
    hp = ServerHParams()
    weights, state = w0, ServerState()
    for d in deltas[:2]:
        weights, state = server_update(strategy, weights, d, state, hp)
    tensors, meta = state.to_checkpoint()
    path = tmp_path / "state.safetensors"
    save_file(tensors, path, metadata={"server_state": json.dumps(meta)})
    with safe_open(path, framework="np") as f:
        meta_json = f.metadata()["server_state"]
    restored = ServerState.from_checkpoint(load_file(path), meta_json)
    assert restored.round == 2 and restored.strategy == strategy
    straight, _ = server_update(strategy, weights, deltas[2], state, hp)
    resumed, _ = server_update(strategy, weights, deltas[2], restored, hp)
    for k in w0:
        np.testing.assert_array_equal(resumed[k], straight[k])


def test_validation_of_updates():
    good = {"w": arr(1.0, 2.0)}
    with pytest.raises(ValueError, match="names differ"):
        aggregate_plain([ClientResult(good, 1), ClientResult({"v": arr(1.0, 2.0)}, 1)], "fedavg")
    with pytest.raises(ValueError, match="shape"):
        aggregate_plain([ClientResult(good, 1), ClientResult({"w": arr(1.0, 2.0, 3.0)}, 1)], "fedavg")
    with pytest.raises(ValueError, match="NaN"):
        client_contribution({"w": arr(1.0, math.nan)}, 1, 1, "fedavg")
    with pytest.raises(ValueError, match="floating-point"):
        client_contribution({"steps": np.array([3])}, 1, 1, "fedavg")
    with pytest.raises(ValueError, match="num_examples"):
        client_contribution(good, 0, 1, "fedavg")
    with pytest.raises(ValueError, match="local_steps"):
        client_contribution(good, 1, 0, "fednova")
    with pytest.raises(ValueError, match="unknown strategy"):
        client_contribution(good, 1, 1, "krum")
    with pytest.raises(ValueError, match="no contributions"):
        aggregate_plain([], "fedavg")


def test_validation_of_sums_and_state():
    with pytest.raises(ValueError, match="summed weight"):
        aggregate({"w": arr(0.0, 0.0)}, {"weight": 0.0}, "fedavg")
    with pytest.raises(ValueError, match="weighted_steps"):
        aggregate({"w": arr(1.0, 1.0)}, {"weight": 2.0}, "fednova")
    with pytest.raises(ValueError, match="NaN"):
        aggregate({"w": arr(math.inf, 1.0)}, {"weight": 2.0}, "fedavg")
    hp = ServerHParams()
    with pytest.raises(ValueError, match="names differ"):
        server_update("fedavg", {"w": arr(1.0)}, {"x": arr(1.0)}, ServerState(), hp)
    _, adam_state = server_update("fedadam", {"w": arr(1.0)}, {"w": arr(1.0)}, ServerState(), hp)
    with pytest.raises(ValueError, match="belongs to 'fedadam'"):
        server_update("fedavgm", {"w": arr(1.0)}, {"w": arr(1.0)}, adam_state, hp)
    with pytest.raises(ValueError, match="shape"):
        server_update("fedadam", {"w": arr(1.0, 2.0)}, {"w": arr(1.0, 2.0)}, adam_state, hp)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_lr": 0.0},
        {"server_lr": math.inf},
        {"momentum": 1.0},
        {"beta1": -0.1},
        {"beta2": 1.0},
        {"tau": 0.0},
        {"proximal_mu": -1.0},
    ],
)
def test_hparams_validation(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ServerHParams(**kwargs)


def test_hparams_json_round_trip():
    hp = ServerHParams(server_lr=0.05, proximal_mu=0.01)
    assert ServerHParams.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
    with pytest.raises(ValueError, match="unknown"):
        ServerHParams.from_dict({"lr": 1.0})
