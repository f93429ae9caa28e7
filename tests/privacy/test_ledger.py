"""The privacy budget ledger: reservations, charges, releases and ε over time, composed, never added.

Known values: σ = 1, q = 256/10 000 for 2000 steps (``REFERENCE``) is ε ≈ 8.13 (RDP) and
≈ 7.46 (PRV) at δ = 1e-5; 1000 steps (``HALF``) is ε ≈ 5.66 (RDP). A round of 500 steps with
σ = 1 composed with 1500 steps at q: at q × 1.1 ε ≈ 8.38, at q × 1.5 ε ≈ 9.53 (7.43 with only
500 steps at q, 6.23 alone); with σ = 0.9 ε ≈ 8.68.
"""

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from privacy.accounting import Mechanism, epsilon
from privacy.ledger import (
    CHARGE,
    RELEASE,
    RESERVE,
    BudgetExceeded,
    Entry,
    EpsilonPoint,
    Ledger,
    RoundRefused,
)

Q = 256 / 10_000
DELTA = 1e-5
REFERENCE = Mechanism(noise_multiplier=1.0, sample_rate=Q, steps=2000)
HALF = Mechanism(1.0, Q, 1000)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_ledger_spends_reserves_and_refuses():
    ledger = Ledger(epsilon_max=10.0, delta=DELTA)
    assert ledger.spent() == 0.0
    ledger.charge("a", 1, HALF)
    assert ledger.spent() == pytest.approx(5.66, abs=0.01)
    plan = Mechanism(1.0, Q, 1000)
    assert ledger.project(plan) == pytest.approx(epsilon([REFERENCE], DELTA), rel=1e-9)
    assert ledger.project(plan) == pytest.approx(8.13, abs=0.01)
    assert ledger.remaining_fits(plan)
    ledger.reserve("b", plan)
    assert ledger.committed() == pytest.approx(8.13, abs=0.01)
    too_much = Mechanism(1.0, Q, 2000)
    assert not ledger.remaining_fits(too_much)
    with pytest.raises(ValueError, match="over the budget") as refused:
        ledger.reserve("c", too_much)
    assert isinstance(refused.value, BudgetExceeded)
    assert refused.value.epsilon == pytest.approx(12.0, abs=0.01)  # 4000 steps in all
    assert refused.value.committed == pytest.approx(8.13, abs=0.01)
    assert len(ledger.entries) == 2  # the refused plan changed nothing
    restored = Ledger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger


def test_prv_ledger_composes_with_prv():
    ledger = Ledger(epsilon_max=10.0, delta=DELTA, accountant="prv")
    ledger.reserve("a", REFERENCE)
    assert ledger.committed() == pytest.approx(7.46, abs=0.1)


def test_a_study_runs_rounds_until_its_reservation_is_used():
    ledger = Ledger(epsilon_max=10.0, delta=DELTA)
    round_mech = Mechanism(1.0, Q, 500)
    assert ledger.round_refusal("a", round_mech) == "no active budget reservation for this study"
    assert ledger.reserve("a", REFERENCE) == Entry(RESERVE, "a", REFERENCE)
    assert ledger.spent() == 0.0 and ledger.committed() == pytest.approx(8.13, abs=0.01)
    for number in range(1, 5):
        assert ledger.round_refusal("a", round_mech) is None
        assert ledger.charge("a", number, round_mech) == Entry(CHARGE, "a", round_mech, round=number)
        # committed stays: a charge only turns reserved steps into spent ones
        assert ledger.committed() == pytest.approx(8.13, abs=0.01)
    assert ledger.charge("a", 4, round_mech) is None  # each round is charged once
    assert ledger.round_refusal("a", round_mech) == "the study's reserved budget is used up"
    assert ledger.outstanding() == []
    assert ledger.spent() == pytest.approx(epsilon([REFERENCE], DELTA), rel=1e-9)


def test_a_round_that_would_exceed_the_budget_is_refused():
    # b's round ran after b was released (what ran is charged): a's next round no longer fits
    ledger = Ledger(epsilon_max=7.5, delta=DELTA, entries=[Entry(RESERVE, "a", HALF)])
    assert ledger.charge("b", 1, Mechanism(1.0, Q, 1500)) is not None
    assert ledger.round_refusal("a", Mechanism(1.0, Q, 500)) == "this round would exceed the budget 7.5"


def two_studies(epsilon_max: float = 8.5) -> Ledger:
    """Studies a and b each reserve 1000 steps at σ = 1, q = Q: committed ε ≈ 8.13."""
    ledger = Ledger(epsilon_max=epsilon_max, delta=DELTA)
    ledger.reserve("a", HALF)
    ledger.reserve("b", HALF)
    assert ledger.committed() == pytest.approx(8.13, abs=0.01)
    return ledger


def test_a_round_is_claimed_once_and_a_retry_reuses_its_charge():
    ledger = two_studies()
    round_mech = Mechanism(1.0, Q, 500)
    assert ledger.claim("a", 1, round_mech) == Entry(CHARGE, "a", round_mech, round=1)
    assert ledger.spent() == pytest.approx(epsilon([round_mech], DELTA), rel=1e-9)
    assert ledger.committed() == pytest.approx(8.13, abs=0.01)  # reserved steps turned spent
    assert ledger.claim("a", 1, round_mech) is None  # a retry: charged already, nothing new
    assert len(ledger.entries) == 3
    grown = Mechanism(1.0, Q * 1.1, 500)
    with pytest.raises(RoundRefused, match=re.escape("round 1 was charged for σ = 1, q = 0.0256, 500 steps")):
        ledger.claim("a", 1, grown)  # a retry on other data would release something new
    assert ledger.claim("a", 2, round_mech) is not None
    assert ledger.round_refusal("a", round_mech, round=2) is None  # round 2's retry
    with pytest.raises(RoundRefused, match=r"^the study's reserved budget is used up$"):
        ledger.claim("a", 3, round_mech)
    with pytest.raises(RoundRefused, match=r"^no active budget reservation for this study$"):
        ledger.claim("c", 1, round_mech)
    assert len(ledger.entries) == 4  # refused claims append nothing


def test_a_round_may_not_exceed_its_reserved_steps_nor_change_its_unit():
    ledger = two_studies()
    ledger.claim("a", 1, Mechanism(1.0, Q, 700))
    assert ledger.round_refusal("a", Mechanism(1.0, Q, 500)) == (
        "steps: this round needs 500, the reservation has 300 left"
    )
    frame = Mechanism(1.0, Q / 10, 300, unit="frame")  # cheaper, but it protects less
    assert ledger.round_refusal("a", frame) == "privacy unit: approved episode, now frame"
    assert ledger.round_refusal("a", Mechanism(1.0, Q, 300)) is None


def test_a_round_whose_sample_rate_grew_runs_only_while_the_committed_epsilon_fits():
    # consent withdrawn since approval: fewer units, so q grew; its round is checked on top of
    # every charge and every study's outstanding reservation (its own less this round)
    ledger = two_studies(epsilon_max=8.5)
    slightly = Mechanism(1.0, Q * 1.1, 500)
    assert ledger.round_refusal("a", slightly) is None  # 500 @ 1.1q + 1500 @ q: ε ≈ 8.38 ≤ 8.5
    ledger.claim("a", 1, slightly)
    assert ledger.committed() == pytest.approx(8.38, abs=0.01) and ledger.committed() <= 8.5
    much = Mechanism(1.0, Q * 1.5, 500)
    ledger = two_studies(epsilon_max=8.5)
    why = ledger.round_refusal("a", much)  # 500 @ 1.5q + 1500 @ q: ε ≈ 9.53 > 8.5
    assert why == (
        "the sample rate grew (approved q = 0.0256, now 0.0384) since approval, and this round "
        "would bring the committed ε to 9.534, over the budget 8.5"
    )
    with pytest.raises(RoundRefused, match="sample rate grew"):
        ledger.claim("a", 1, much)
    assert len(ledger.entries) == 2
    # b's reservation counts: without it the round would fit (ε ≈ 7.43 ≤ 8.5)
    alone = Ledger(epsilon_max=8.5, delta=DELTA, entries=[Entry(RESERVE, "a", HALF)])
    assert alone.round_refusal("a", much) is None
    assert alone.claim("a", 1, much) is not None
    assert alone.committed() == pytest.approx(7.43, abs=0.01)


def test_a_round_whose_noise_shrank_is_refused_when_it_does_not_fit():
    ledger = two_studies(epsilon_max=8.5)
    assert ledger.round_refusal("a", Mechanism(0.9, Q, 500)) == (
        "the noise multiplier shrank (approved σ = 1, now 0.9) since approval, and this round "
        "would bring the committed ε to 8.683, over the budget 8.5"
    )
    both = ledger.round_refusal("a", Mechanism(0.9, Q * 1.5, 500))
    assert both is not None and both.startswith(
        "the sample rate grew (approved q = 0.0256, now 0.0384); "
        "the noise multiplier shrank (approved σ = 1, now 0.9)"
    )
    assert two_studies(epsilon_max=8.7).round_refusal("a", Mechanism(0.9, Q, 500)) is None
    safer = Mechanism(1.2, Q / 2, 500)  # more noise, a smaller q: never refused for its cost
    assert ledger.round_refusal("a", safer) is None


def test_release_frees_what_was_not_used():
    ledger = Ledger(epsilon_max=10.0, delta=DELTA)
    ledger.reserve("a", REFERENCE)
    ledger.charge("a", 1, HALF)
    assert ledger.outstanding() == [HALF]  # the 1000 steps not charged yet
    assert ledger.release("a") == Entry(RELEASE, "a")
    assert ledger.release("a") is None and ledger.release("nobody") is None
    assert ledger.outstanding() == [] and ledger.committed() == ledger.spent()
    assert ledger.spent() == pytest.approx(5.66, abs=0.01)
    assert ledger.round_refusal("a", HALF) == "no active budget reservation for this study"


def test_timeline_composes_each_prefix_and_thins_evenly():
    entries = [Entry(CHARGE, "a", HALF, round=r, at=T0 + timedelta(hours=r)) for r in range(10)]
    ledger = Ledger(epsilon_max=100.0, delta=DELTA, entries=entries)
    full = ledger.timeline()
    assert [p.at for p in full] == [e.at for e in entries]
    assert [p.spent for p in full] == pytest.approx([epsilon([HALF] * (i + 1), DELTA) for i in range(10)])
    assert full[1] == EpsilonPoint(entries[1].at, full[1].spent, full[1].spent)  # nothing reserved
    assert full[1].spent == pytest.approx(8.13, abs=0.01)  # 2 × 1000 steps
    thinned = ledger.timeline(max_points=4)
    assert thinned == [full[i] for i in (0, 3, 6, 9)]
    assert ledger.timeline(max_points=10) == full
    with pytest.raises(ValueError, match="max_points"):
        ledger.timeline(max_points=1)
    assert Ledger(epsilon_max=1.0, delta=DELTA).timeline() == []


def test_timeline_counts_a_reservation_until_charged_or_released():
    ledger = Ledger(epsilon_max=20.0, delta=DELTA)
    ledger.reserve("a", REFERENCE, at=T0)
    ledger.charge("a", 1, HALF, at=T0 + timedelta(hours=1))
    ledger.release("a", at=T0 + timedelta(hours=2))
    spent, committed = zip(*[(p.spent, p.committed) for p in ledger.timeline()], strict=True)
    assert spent == pytest.approx((0.0, 5.66, 5.66), abs=0.01)
    assert committed == pytest.approx((8.13, 8.13, 5.66), abs=0.01)


def test_ledger_reports_weakest_privacy_unit():
    ledger = Ledger(epsilon_max=20.0, delta=DELTA, entries=[Entry(CHARGE, "a", REFERENCE, round=1)])
    assert ledger.privacy_unit() == "episode"
    ledger.charge("a", 2, Mechanism(1.0, Q, 10, unit="frame"))
    assert ledger.privacy_unit() == "frame"


def test_entry_validation_and_json_round_trip():
    with pytest.raises(ValueError, match="kind"):
        Entry("spend", "a", HALF)
    with pytest.raises(ValueError, match="needs a Mechanism"):
        Entry(CHARGE, "a")
    with pytest.raises(ValueError, match="no mechanism"):
        Entry(RELEASE, "a", HALF)
    with pytest.raises(ValueError, match="unknown"):
        Entry.from_dict({"kind": RELEASE, "study": "a", "epsilon": 1})
    entry = Entry(CHARGE, "a", Mechanism(0.7, 0.01, 12, unit="frame"), round=3, at=T0)
    assert Entry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry


def test_ledger_validation():
    with pytest.raises(ValueError, match="epsilon_max"):
        Ledger(epsilon_max=0.0, delta=DELTA)
    with pytest.raises(ValueError, match="delta"):
        Ledger(epsilon_max=1.0, delta=1.0)
    with pytest.raises(ValueError, match="accountant"):
        Ledger(epsilon_max=1.0, delta=DELTA, accountant="moments")
    with pytest.raises(ValueError, match="Entry"):
        Ledger(epsilon_max=1.0, delta=DELTA, entries=[REFERENCE])
    with pytest.raises(ValueError, match="missing"):
        Ledger.from_dict({"epsilon_max": 1.0})
