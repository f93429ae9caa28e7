"""Rounds claim their budget in one locked step: two studies' rounds never overspend one budget.

Two studies are approved on one dataset (each reserves its 2 rounds at σ = 1, q = batch / the
training episodes); then a contributor withdraws consent, so each round's sample rate grows and
no round fits its reservation any more: it may run only while the committed ε (every charge,
the round, every study's reserved steps not yet charged) stays within ε_max. ε_max lies between
the committed ε after one such round and after two: exactly one of the two studies' concurrent
rounds may claim it. Each round is checked and charged by :func:`datasite.rounds.check_and_claim`
on its own connection, both released together; the second must see the first's charge (without
the lock both read the ledger first and both are charged: this test fails).

Like ``test_budget_concurrency``, the race runs on PostgreSQL (row locks; this module runs again
in the PostgreSQL pass) and on a SQLite file with a node's settings (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections

from audit import trail
from audit.models import AuditEvent
from common.errors import Forbidden
from datasite import budget, code_requests, consent, rounds
from datasite.models import CodeRequest, Dataset, LedgerEntry, RoundRun
from privacy.accounting import Mechanism, epsilon
from tests.datasite.test_budget_concurrency import (  # noqa: F401 (sqlite_file_database: a fixture)
    PLAN,
    PURPOSE,
    make_dataset,
    receive,
    sqlite_file_database,
)

pytestmark = [pytest.mark.postgres]
DELTA = 1e-5


@dataclass(frozen=True)
class Costs:
    """One study's round mechanism on the dataset as approved and after c-0 withdrew."""

    approved: Mechanism
    grown: Mechanism

    @property
    def whole(self) -> Mechanism:  # what a study reserves
        return budget.study_mechanism(self.approved, PLAN.rounds)

    @property
    def rest(self) -> Mechanism:  # a reservation less one round
        return budget.study_mechanism(self.approved, PLAN.rounds - 1)

    def changed(self) -> str:
        q0, q1 = self.approved.sample_rate, self.grown.sample_rate
        return f"the sample rate grew (approved q = {q0:.4g}, now {q1:.4g})"


def mechanism(ds: Dataset) -> Mechanism:
    return budget.round_mechanism(PLAN, consent.training_units(ds, PLAN, consent.split_episodes(ds, PLAN)))


def approved_studies(n: int) -> tuple[Dataset, list[RoundRun], Costs]:
    """``n`` studies approved on one dataset, each with its round 1 assigned; then c-0's consent
    is withdrawn (fewer training episodes: a larger sample rate)."""
    owner = User.objects.create_user("olga")
    ds = make_dataset()
    Dataset.objects.filter(pk=ds.pk).update(epsilon_max=100.0)
    for who in sorted(set(ds.contributors().values())):
        consent.record_consent(who, PURPOSE, True, "form-1", owner)
    runs = []
    for i in range(n):
        pending = receive(ds, i)
        request = code_requests.decide(pending, owner, True, pending.code_sha256)
        hashes = {"code_sha256": request.code_sha256, "plan_sha256": request.plan_sha256}
        runs.append(RoundRun.objects.create(request=request, study=request.study, round=1, assignment=hashes))
    approved = mechanism(ds)
    consent.record_consent("c-0", PURPOSE, False, "form-2", owner)
    costs = Costs(approved, mechanism(ds))
    assert costs.grown.sample_rate > costs.approved.sample_rate, costs
    return ds, runs, costs


def set_budget(ds: Dataset, epsilon_max: float) -> None:
    """The data owner's new ε_max; what is committed already fits it."""
    Dataset.objects.filter(pk=ds.pk).update(epsilon_max=epsilon_max)
    ds.refresh_from_db()
    assert budget.view(ds).committed <= epsilon_max


def claim_concurrently(runs: list[RoundRun]) -> tuple[list[str], list[Forbidden], list[BaseException]]:
    """Every run checked and claimed by its own thread, all released at once:
    (studies claimed, refusals, other errors)."""
    claimed: list[str] = []
    refused: list[Forbidden] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(runs))

    def claim(run: RoundRun) -> None:
        try:
            start.wait()
            rounds.check_and_claim(run)
            claimed.append(run.study)
        except Forbidden as exc:
            refused.append(exc)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=claim, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claimed, refused, errors


def two_rounds_for_a_budget_of_one() -> None:
    ds, runs, c = approved_studies(2)
    one = epsilon([c.grown, c.rest, c.whole], DELTA)  # committed once one grown round is charged
    two = epsilon([c.grown, c.rest] * 2, DELTA)
    assert one < two - 0.1, (one, two)  # a clear margin either side of ε_max
    epsilon_max = (one + two) / 2
    set_budget(ds, epsilon_max)

    claimed, refused, errors = claim_concurrently(runs)

    assert errors == [], errors
    assert len(claimed) == 1 and len(refused) == 1, (claimed, refused)
    assert f"{c.changed()} since approval" in str(refused[0])
    assert f"over the budget {epsilon_max:g}" in str(refused[0])
    charge = LedgerEntry.objects.get(dataset=ds, kind="charge")  # exactly one
    assert (charge.study, charge.round) == (claimed[0], 1)
    assert charge.sample_rate == pytest.approx(c.grown.sample_rate)
    view = budget.view(ds)
    assert view.spent == pytest.approx(epsilon([c.grown], DELTA))
    assert view.spent <= view.committed <= epsilon_max
    assert view.committed == pytest.approx(one)
    assert AuditEvent.objects.filter(action="budget.charged").count() == 1
    report = trail.verify_chain()
    assert report.ok, report.first_problem


@pytest.mark.adversarial
@pytest.mark.django_db(transaction=True)
def test_two_studies_concurrent_rounds_never_overspend_one_budget():
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip(
            "the in-memory test database's shared cache fails lock waits at once (SQLITE_LOCKED); "
            "test_two_studies_concurrent_rounds_on_a_sqlite_file covers SQLite"
        )
    two_rounds_for_a_budget_of_one()


@pytest.mark.adversarial
def test_two_studies_concurrent_rounds_on_a_sqlite_file(sqlite_file_database):  # noqa: F811
    two_rounds_for_a_budget_of_one()


@pytest.mark.django_db
def test_a_round_whose_sample_rate_grew_is_refused_unless_the_budget_still_holds_it():
    ds, (run,), c = approved_studies(1)
    fits = epsilon([c.grown, c.rest], DELTA)  # committed once the grown round is charged
    set_budget(ds, (epsilon([c.whole], DELTA) + fits) / 2)
    with pytest.raises(Forbidden) as refused:
        rounds.check_and_claim(run)
    assert str(refused.value).startswith(f"dataset lab-a: {c.changed()} since approval, and this round")
    assert not LedgerEntry.objects.filter(kind="charge").exists()  # a refused round leaves no trace
    assert not AuditEvent.objects.filter(action="budget.charged").exists()
    set_budget(ds, fits + 0.01)  # now the grown round fits on top of everything committed
    rounds.check_and_claim(run)
    charge = LedgerEntry.objects.get(kind="charge")
    assert (charge.sample_rate, charge.steps) == (pytest.approx(c.grown.sample_rate), PLAN.local_steps)
    assert budget.view(ds).committed == pytest.approx(fits)
    rounds.check_and_claim(run)  # a retry of the round reuses its charge
    assert LedgerEntry.objects.filter(kind="charge").count() == 1
    assert AuditEvent.objects.filter(action="budget.charged").count() == 1
    # consent given back after the charge: a retry would run on other data, so it may not
    consent.record_consent("c-0", PURPOSE, True, "form-3")
    with pytest.raises(Forbidden, match=r"round 1 was charged for σ = 1, q = 0\.\d+, 4 steps"):
        rounds.check_and_claim(run)
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


@pytest.mark.django_db
def test_a_revoked_study_claims_nothing():
    ds, (run,), _ = approved_studies(1)
    request = CodeRequest.objects.get(pk=run.request_id)
    code_requests.revoke(request, User.objects.get(username="olga"), "withdrawn")
    with pytest.raises(Forbidden, match="approval is revoked"):
        rounds.check_and_claim(run)
    assert not LedgerEntry.objects.filter(dataset=ds, kind="charge").exists()
