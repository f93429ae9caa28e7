"""Concurrent approvals never overspend: 50 data-owner approvals race for a budget that fits 10.

Each of 50 pending code requests (different studies, identical plans) would reserve the same
mechanism on one dataset; ε_max lies between the composed ε of 10 and of 11 such studies.
50 threads, released together, each call ``code_requests.decide(..., approve=True)`` on their own
database connection. Exactly 10 must win; the other 40 get a Conflict and change nothing.

On PostgreSQL ``decide`` serialises on ``SELECT … FOR UPDATE`` of the dataset row (this
module runs again in the PostgreSQL pass). On SQLite the in-memory test database cannot make
threads wait for a lock (its shared cache answers SQLITE_LOCKED at once), so the SQLite variant
runs against a real database file with a node's settings (WAL, ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection, connections

from audit import trail
from audit.models import AuditEvent
from common.errors import Conflict
from common.protocol import CodeBundle, CodeRequestIn, DPPlan, Plan, bundle_sha256
from common.roles import DATA_OWNER
from datasite import budget, code_requests, consent
from datasite.models import CodeRequest, Dataset, LedgerEntry
from privacy.accounting import Mechanism, epsilon

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
APPROVALS, FITS = 50, 10
EPISODES, PURPOSE = 20, "policy-training"
PLAN = Plan(rounds=2, local_steps=4, batch_size=2, dp=DPPlan(noise_multiplier=1.0), purpose=PURPOSE)
CODE = CodeBundle(recipe="act", config={"chunk_size": 10})


def make_dataset(name: str = "lab-a") -> Dataset:
    """A registered dataset row, without files: 20 episodes of 4 contributors."""
    joint = {"dtype": "float32", "shape": [6], "names": [f"j{i}" for i in range(6)]}
    summary = {
        "contributors": {str(e): f"c-{e % 4}" for e in range(EPISODES)},
        "features": {"observation.state": joint, "action": joint},
        "stats": {k: {"mean": [0.0] * 6, "std": [1.0] * 6} for k in ("observation.state", "action")},
        "robot_type": "so100",
        "fps": 30,
        "cameras": [],
        "episode_lengths": {str(e): 60 for e in range(EPISODES)},
    }
    return Dataset.objects.create(
        name=name,
        root=f"/nonexistent/{name}",
        repo_id=f"local/{name}",
        summary=summary,
        mock={},
        num_episodes=EPISODES,
        num_frames=60 * EPISODES,
        epsilon_max=1.0,
        delta=1e-5,
    )


def study_mechanism(ds: Dataset) -> Mechanism:
    """What one study reserves on ``ds``: its round mechanism for all of its rounds."""
    split = consent.split_episodes(ds, PLAN)
    m = budget.round_mechanism(PLAN, consent.training_units(ds, PLAN, split))
    return Mechanism(m.noise_multiplier, m.sample_rate, m.steps * PLAN.rounds, m.unit)


def receive(ds: Dataset, i: int) -> CodeRequest:
    return code_requests.receive_code_request(
        CodeRequestIn(
            study=uuid.uuid4().hex,
            version=1,
            title=f"Study {i}",
            researcher="dr-rivera",
            code=CODE,
            code_sha256=bundle_sha256(CODE),
            plan=PLAN,
            datasets=[ds.name],
            sites=[settings.NODE_NAME],
        )
    )


def approve_concurrently(requests: list[CodeRequest], owner: User) -> tuple[list, list]:
    """Every request approved by its own thread, all released at once: (conflicts, other errors)."""
    conflicts: list[Conflict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(requests))

    def approve(request: CodeRequest) -> None:
        try:
            start.wait()
            code_requests.decide(request, owner, True, request.code_sha256)
        except Conflict as exc:
            conflicts.append(exc)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=approve, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return conflicts, errors


def fifty_approvals_for_a_budget_of_ten() -> None:
    owner = User.objects.create_user("olga")
    owner.groups.add(Group.objects.get_or_create(name=DATA_OWNER)[0])
    ds = make_dataset()
    for who in sorted(set(ds.contributors().values())):
        consent.record_consent(who, PURPOSE, True, "form-1", owner)
    mech = study_mechanism(ds)
    fits, one_more = epsilon([mech] * FITS, ds.delta), epsilon([mech] * (FITS + 1), ds.delta)
    assert fits < one_more - 0.05, (fits, one_more)  # a clear margin either side of ε_max
    epsilon_max = (fits + one_more) / 2
    Dataset.objects.filter(pk=ds.pk).update(epsilon_max=epsilon_max)
    ds.refresh_from_db()
    requests = [receive(ds, i) for i in range(APPROVALS)]

    conflicts, errors = approve_concurrently(requests, owner)

    assert errors == [], errors
    approved = set(CodeRequest.objects.filter(status="approved").values_list("study", flat=True))
    assert len(approved) == FITS
    assert CodeRequest.objects.filter(status="pending").count() == APPROVALS - FITS
    assert len(conflicts) == APPROVALS - FITS
    assert all("over its budget" in str(exc) for exc in conflicts), {str(exc) for exc in conflicts}
    reserves = LedgerEntry.objects.filter(dataset=ds, kind="reserve")
    assert reserves.count() == FITS
    assert set(reserves.values_list("study", flat=True)) == approved
    assert not LedgerEntry.objects.exclude(kind="reserve").exists()
    view = budget.view(ds)
    assert view.committed <= epsilon_max
    assert view.committed == pytest.approx(fits)
    assert AuditEvent.objects.filter(action="budget.reserved").count() == FITS
    assert AuditEvent.objects.filter(action="code_request.approved").count() == FITS
    report = trail.verify_chain()
    assert report.ok, report.first_problem


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_approvals_reserve_exactly_ten():
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip(
            "the in-memory test database's shared cache fails lock waits at once (SQLITE_LOCKED); "
            "test_fifty_concurrent_approvals_on_a_sqlite_file covers SQLite"
        )
    fifty_approvals_for_a_budget_of_ten()


@pytest.fixture
def sqlite_file_database(django_db_setup, django_db_blocker, tmp_path: Path) -> Iterator[None]:
    """The ``default`` alias pointed at a migrated SQLite file with a node's settings, then restored.

    ``code_requests.decide`` (and ``rounds.check_and_claim``, in ``test_budget_race``) use the
    default alias, so the alias itself moves: threads open their own connections to the file.
    The busy timeout is longer than a node's (30 s) only so that a slow CI machine cannot time
    out the 50th waiter; the locking is the node's.
    """
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only (the PostgreSQL pass runs the same race on its test database)")
    saved_settings, saved_connection = connections.settings["default"], connections["default"]
    assert saved_settings["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    options = {**saved_settings["OPTIONS"], "timeout": 120}
    connections.settings["default"] = {
        **saved_settings,
        "NAME": str(tmp_path / "node.sqlite3"),
        "OPTIONS": options,
    }
    del connections["default"]
    try:
        with django_db_blocker.unblock():
            call_command("migrate", verbosity=0, interactive=False)
            assert not connection.is_in_memory_db()
            yield
    finally:
        connections["default"].close()
        connections.settings["default"] = saved_settings
        connections["default"] = saved_connection


def test_fifty_concurrent_approvals_on_a_sqlite_file(sqlite_file_database):
    fifty_approvals_for_a_budget_of_ten()
