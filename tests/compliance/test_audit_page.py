"""The audit page at every node: roles, newest-first pages, filters, and the chain status shown
as OK (count and head hash) or BROKEN (the first problem) after tampering by raw SQL."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from unittest import mock

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection
from django.test import Client
from django.urls import reverse

from audit import trail
from audit.models import AuditEvent
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN, PEER_NODE, RESEARCHER
from compliance.audit_views import PER_PAGE, audit_log

pytestmark = pytest.mark.django_db
TABLE, TRIGGER = "compliance_auditevent", "compliance_auditevent_append_only"
URL = "/compliance/audit/"


def make_user(username: str, *roles: str) -> User:
    user = User.objects.create_user(username)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@contextlib.contextmanager
def as_table_owner():
    """On PostgreSQL the append-only trigger refuses raw SQL: turn it off as the table owner could."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {TRIGGER}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER {TRIGGER}")


def raw(sql: str, params: list | tuple = ()) -> None:
    with as_table_owner(), connection.cursor() as cursor:
        cursor.execute(sql, params)


def record_at(when: datetime, action: str, actor: str = "system", target: str = "", data: dict | None = None):
    with mock.patch("audit.trail.timezone.now", return_value=when):
        return trail.record(action, actor, target, data)


def seqs(html: str) -> list[int]:
    """The event numbers of the page's rows, in page order."""
    return [int(s) for s in re.findall(r'<tr id="event-(\d+)"', html)]


@pytest.fixture
def officer() -> Client:
    return client_for(make_user("carl", COMPLIANCE_OFFICER))


@pytest.fixture
def history(officer: Client) -> list[AuditEvent]:
    """Nine events (seq 2 to 10) over three days, by people, the system and a peer node.

    Event 1 is the officer's sign-in, today.
    """
    day = [datetime(2025, 3, d, 10, 0, tzinfo=UTC) for d in (1, 2, 3)]
    return [
        record_at(day[0], "consent.given", "olga", "contributor:c-alice", {"purpose": "policy-training"}),
        record_at(day[0], "consent.given", "olga", "contributor:c-bob", {"purpose": "policy-training"}),
        record_at(day[0], "code_request.received", "node:orch", "study:aaaa1111", {"version": 1}),
        record_at(day[1], "code_request.approved", "olga", "study:aaaa1111", {"version": 1}),
        record_at(day[1], "budget.reserved", "olga", "dataset:lab-a", {"study": "aaaa1111"}),
        record_at(day[1], "consent.withdrawn", "Olga", "contributor:c-bob", {"purpose": "policy-training"}),
        record_at(day[2], "round.finished", "system", "study:aaaa1111", {"round": 1}),
        record_at(day[2], "data.accessed", "system", "dataset:lab-a", {"episodes": list(range(40))}),
        record_at(day[2], "code_request.denied", "olga", "study:bbbb2222", {"reason": "<script>x</script>"}),
    ]


# ----------------------------------------------------------------------------- roles


@pytest.mark.parametrize("node", ["datasite", "orchestrator"])
@pytest.mark.parametrize(
    ("role", "status"),
    [
        (COMPLIANCE_OFFICER, 200),
        (DATA_OWNER, 200),
        (NODE_ADMIN, 200),
        (RESEARCHER, 403),
        (PEER_NODE, 403),
        ("", 403),  # signed in, no role
        (None, 302),  # anonymous
    ],
)
def test_audit_page_by_role_at_both_nodes(settings, node, role, status):
    settings.ROLE = node
    settings.ROOT_URLCONF = f"webapp.urls_{node}"
    trail.record("test.event")
    user = None if role is None else make_user("someone", *([role] if role else []))
    client = client_for(user)
    assert reverse("compliance:audit") == URL
    response = client.get(URL)
    assert response.status_code == status
    if role is None:
        assert response["Location"].startswith(reverse("login"))
    assert client.post(URL).status_code == (302 if role is None else 405)  # a page to read only


def test_linked_from_reports_index_and_home(officer):
    assert f'href="{URL}"'.encode() in officer.get(reverse("compliance:reports")).content
    assert f'href="{URL}"'.encode() in officer.get(reverse("home")).content
    researcher = client_for(make_user("rita", RESEARCHER))
    assert f'href="{URL}"'.encode() not in researcher.get(reverse("home")).content


# ----------------------------------------------------------------------------- list and filters


def test_newest_first_and_paginated(officer):
    for i in range(PER_PAGE + 10):  # after the officer's sign-in (event 1): events 2 to 61
        trail.record("test.step", "system", f"n:{i}")
    first = officer.get(URL).content.decode()
    assert seqs(first) == list(range(PER_PAGE + 11, 11, -1))
    assert "Page 1 of 2" in first and "page=2" in first
    second = officer.get(URL, {"page": 2}).content.decode()
    assert seqs(second) == list(range(11, 0, -1))
    assert seqs(officer.get(URL, {"page": 99}).content.decode()) == list(range(11, 0, -1))  # the last page
    filtered = officer.get(URL, {"action": "test.", "page": 2}).content.decode()
    assert "action=test.&amp;page=1" in filtered  # the pager keeps the filters
    assert seqs(filtered) == list(range(11, 1, -1))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),
        ({"action": "consent"}, [7, 3, 2]),
        ({"action": "consent.given"}, [3, 2]),
        ({"action": "code_request."}, [10, 5, 4]),
        ({"action": "request"}, []),  # a prefix, not a substring
        ({"action": "auth"}, [1]),
        ({"actor": "olga"}, [10, 7, 6, 5, 3, 2]),  # case-insensitive, the whole name
        ({"actor": "olg"}, []),
        ({"actor": "node:orch"}, [4]),
        ({"target": "aaaa"}, [8, 5, 4]),
        ({"target": "LAB-A"}, [9, 6]),
        ({"since": "2025-03-02", "until": "2025-03-03"}, [10, 9, 8, 7, 6, 5]),
        ({"since": "2025-03-03"}, [10, 9, 8, 1]),  # open-ended: the sign-in is today
        ({"until": "2025-03-01"}, [4, 3, 2]),
        ({"since": "2025-03-02", "until": "2025-03-02"}, [7, 6, 5]),
        ({"upto": "4"}, [4, 3, 2, 1]),
        ({"action": "consent", "actor": "olga", "since": "2025-03-02"}, [7]),
    ],
)
def test_filters(officer, history, query, expected):
    response = officer.get(URL, query)
    assert response.status_code == 200
    assert seqs(response.content.decode()) == expected


def test_event_details_are_shown_and_escaped(officer, history):
    page = officer.get(URL).content.decode()
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    assert "<details><summary>" in page  # the long data.accessed payload folds
    assert history[0].hash[:12] in page and "2025-03-01 10:00:00" in page
    assert '<option value="code_request">' in page and '<option value="consent.withdrawn">' in page
    assert "No event matches this search." in officer.get(URL, {"actor": "nobody"}).content.decode()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "2025-03-03", "until": "2025-03-01"}, "after the “until” date"),
        ({"since": "yesterday"}, "Enter a valid date"),
        ({"upto": "0"}, "greater than or equal to 1"),
        ({"actor": "x" * 151}, "at most 150 characters"),
    ],
)
def test_bad_filters_are_400_with_a_message(officer, history, query, message):
    response = officer.get(URL, query)
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and "correct the search" in page
    assert seqs(page) == []
    assert 'data-status="ok"' in page  # the chain status is still shown


# ----------------------------------------------------------------------------- chain status


def test_chain_ok_shows_count_and_head_hash(officer, history):
    page = officer.get(URL).content.decode()
    assert 'data-status="ok"' in page and "Chain verified" in page
    assert "All <strong>10</strong> events verified" in page
    assert history[-1].hash in page
    assert "BROKEN" not in page


def test_empty_chain_is_ok(rf):
    request = rf.get(URL)
    request.user = make_user("carl", COMPLIANCE_OFFICER)  # no sign-in: no event at all
    page = audit_log(request).content.decode()
    assert "Chain verified" in page and "No event recorded yet." in page


def test_changed_event_shows_the_chain_broken(officer, history):
    raw(f"UPDATE {TABLE} SET data = %s WHERE seq = 3", ['{"version": 2}'])  # noqa: S608
    response = officer.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-status="broken"' in page and "Chain verified" not in page
    assert "Chain BROKEN at event #3" in page
    assert "seq 3: hash mismatch (content changed)" in page
    assert "The 2 events before it verified" in page and "the 8 stored events from" in page
    assert history[0].hash in page  # the last good head (event 2)
    assert re.search(r'<tr id="event-3" class="problem"', page)
    assert not re.search(r'<tr id="event-4" class="problem"', page)
    assert 'href="?upto=4"' in page


def test_deleted_event_shows_the_chain_broken(officer, history):
    raw(f"DELETE FROM {TABLE} WHERE seq = 5")  # noqa: S608
    page = officer.get(URL).content.decode()
    assert "Chain BROKEN at event #5" in page and "seq 5: missing event" in page
    assert seqs(page) == [10, 9, 8, 7, 6, 4, 3, 2, 1]


def test_foreign_signer_is_a_warning(officer, settings, tmp_path):
    from common.node import create_node

    trail.record("test.ephemeral")  # signed, like the sign-in, by this process's ephemeral key
    settings.FEDSILO_AUDIT_ALLOWED_SIGNERS = [trail.public_key_b64(trail.signing_key())]  # else BROKEN
    settings.NODE_DIR = create_node(tmp_path / "node", "datasite", "lab-a", "http://127.0.0.1:8111").dir
    trail.record("test.node")
    page = officer.get(URL).content.decode()
    assert "Chain verified" in page and "Warning: 2 event(s) signed by a key that is not this node" in page
