"""Privacy ledger: composition of the whole mechanism history with Opacus accountants."""

import itertools
import json
import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from privacy.accounting import Mechanism, epsilon, noise_for_epsilon, project

Q = 256 / 10_000
DELTA = 1e-5
REFERENCE = Mechanism(noise_multiplier=1.0, sample_rate=Q, steps=2000)


def test_reference_values_rdp_and_prv():
    assert epsilon([REFERENCE], DELTA, "rdp") == pytest.approx(8.14, abs=0.05)
    assert epsilon([REFERENCE], DELTA, "prv") == pytest.approx(7.46, abs=0.1)


def test_rdp_matches_opacus_stepped_one_step_at_a_time():
    acc = RDPAccountant()
    for _ in range(300):
        acc.step(noise_multiplier=1.1, sample_rate=0.01)
    for _ in range(200):
        acc.step(noise_multiplier=0.8, sample_rate=0.02)
    history = [Mechanism(1.1, 0.01, 300), Mechanism(0.8, 0.02, 200)]
    assert epsilon(history, DELTA) == pytest.approx(acc.get_epsilon(DELTA), rel=1e-12)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_two_studies_compose_like_one_accountant_over_concatenated_history(accountant):
    study_a = [Mechanism(1.0, Q, 700), Mechanism(1.3, 0.05, 200)]
    study_b = [Mechanism(1.0, Q, 1300), Mechanism(0.9, 0.01, 400)]
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in study_a + study_b]
    expected = acc.get_epsilon(delta=DELTA)
    composed = epsilon(study_a + study_b, DELTA, accountant)
    assert composed == pytest.approx(expected, rel=1e-6)
    # splitting one study's steps across entries changes nothing
    split = [Mechanism(1.0, Q, 1000), Mechanism(1.0, Q, 1000)]
    assert epsilon(split, DELTA, accountant) == pytest.approx(
        epsilon([REFERENCE], DELTA, accountant), rel=1e-6
    )


def test_adding_epsilons_is_looser_than_composition():
    rounds = [Mechanism(1.0, Q, 200) for _ in range(10)]
    added = sum(epsilon([m], DELTA) for m in rounds)
    composed = epsilon(rounds, DELTA)
    assert composed == pytest.approx(epsilon([REFERENCE], DELTA), rel=1e-9)
    assert added > 3 * composed  # 27.9 vs 8.13 here; the ledger never adds


def test_epsilon_strictly_grows_with_steps():
    values = [epsilon([Mechanism(1.0, Q, n)], DELTA) for n in (1, 10, 100, 1000, 2000)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_edge_histories():
    assert epsilon([], DELTA) == 0.0
    assert epsilon([Mechanism(1.0, Q, 0)], DELTA) == 0.0
    assert epsilon([REFERENCE, Mechanism(0.0, Q, 5)], DELTA) == math.inf
    assert epsilon([REFERENCE, Mechanism(0.0, Q, 0)], DELTA) == epsilon([REFERENCE], DELTA)
    assert math.isfinite(epsilon([Mechanism(1.0, 1.0, 10)], DELTA, "prv"))


def test_project_adds_the_plan_to_the_history():
    history = [Mechanism(1.0, Q, 1500)]
    assert project(history, Mechanism(1.0, Q, 500), DELTA) == pytest.approx(
        epsilon([REFERENCE], DELTA), rel=1e-9
    )


def test_noise_for_epsilon_round_trips_rdp():
    sigma = noise_for_epsilon(3.0, DELTA, Q, 2000)
    eps = epsilon([Mechanism(sigma, Q, 2000)], DELTA)
    assert 3.0 * 0.99 <= eps <= 3.0


def test_noise_for_epsilon_round_trips_prv_with_history():
    history = [Mechanism(1.0, 0.05, 100)]
    sigma = noise_for_epsilon(4.0, DELTA, 0.05, 100, history=history, accountant="prv")
    eps = project(history, Mechanism(sigma, 0.05, 100), DELTA, "prv")
    assert 4.0 * 0.99 <= eps <= 4.0
    # the history costs something: the plan alone would need less noise
    assert sigma > noise_for_epsilon(4.0, DELTA, 0.05, 100, accountant="prv")


def test_noise_for_epsilon_rejects_spent_or_unreachable_targets():
    with pytest.raises(ValueError, match="history alone already spends"):
        noise_for_epsilon(8.0, DELTA, Q, 100, history=[REFERENCE])
    with pytest.raises(ValueError, match="cannot certify"):
        noise_for_epsilon(0.05, DELTA, Q, 100)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        noise_for_epsilon(1.0, DELTA, Q, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -1.0, "sample_rate": Q, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": math.nan, "sample_rate": Q, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": Q, "steps": -1}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": Q, "steps": 2.5}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": Q, "steps": 1, "unit": "robot"}, "unit"),
    ],
)
def test_mechanism_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mechanism(**kwargs)


def test_argument_validation():
    with pytest.raises(ValueError, match="delta"):
        epsilon([REFERENCE], 0.0)
    with pytest.raises(ValueError, match="accountant"):
        epsilon([REFERENCE], DELTA, "gdp")
    with pytest.raises(ValueError, match="Mechanism"):
        epsilon([(1.0, Q, 10)], DELTA)
    with pytest.raises(ValueError, match="missing"):
        Mechanism.from_dict({"noise_multiplier": 1.0, "sample_rate": Q})
    with pytest.raises(ValueError, match="unknown"):
        Mechanism.from_dict({**REFERENCE.to_dict(), "epsilon": 3})


def test_mechanism_json_round_trip():
    m = Mechanism(0.7, 0.01, 123, unit="frame")
    assert Mechanism.from_dict(json.loads(json.dumps(m.to_dict()))) == m
