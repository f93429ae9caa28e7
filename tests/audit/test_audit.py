"""The audit log: append-only, hash-chained, signed; tampering of every kind is found."""

import contextlib
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from audit import trail
from audit.models import GENESIS_HASH, AppendOnlyError, AuditEvent
from common.node import create_node
from common.signing import sign

pytestmark = pytest.mark.postgres
db = pytest.mark.django_db
TABLE = "compliance_auditevent"
TRIGGER = "compliance_auditevent_append_only"


def make_chain(n: int = 5) -> list[AuditEvent]:
    return [trail.record("test.step", f"alice-{i}", f"thing:{i}", {"i": i}) for i in range(n)]


def raw(sql: str, params: list | tuple = ()) -> None:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@contextlib.contextmanager
def as_table_owner():
    """Raw SQL that bypasses the ORM. On PostgreSQL the trigger refuses it first (asserted);
    then, like an attacker holding the table owner's rights, the test turns the trigger off."""
    if connection.vendor != "postgresql":
        yield
        return
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        raw(f"UPDATE {TABLE} SET actor = 'mallory'")  # noqa: S608
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        raw(f"DELETE FROM {TABLE}")  # noqa: S608
    raw(f"ALTER TABLE {TABLE} DISABLE TRIGGER {TRIGGER}")
    try:
        yield
    finally:
        raw(f"ALTER TABLE {TABLE} ENABLE TRIGGER {TRIGGER}")


def problem() -> str:
    report = trail.verify_chain()
    assert not report.ok
    return report.first_problem or ""


@db
def test_chain_of_events_verifies():
    user = get_user_model().objects.create_user("dora")
    first = trail.record("consent.withdrawn", user, "contributor:c-123", {"purpose": "policy-training"})
    trail.record("study.created", None, "study:1")
    trail.record("round.started", "orchestrator-1", "study:1", {"round": 1, "sites": ["a", "b"]})
    last = trail.record("budget.charged", "system", "dataset:7", {"eps": 0.25, "delta": 1e-5})
    assert (first.seq, first.prev_hash, first.actor) == (1, GENESIS_HASH, "dora")
    assert AuditEvent.objects.get(seq=2).actor == "system"
    assert [e.prev_hash for e in AuditEvent.objects.all()[1:]] == [
        e.hash for e in AuditEvent.objects.all()[:3]
    ]
    report = trail.verify_chain()
    assert report.ok and report.first_problem is None, report
    assert (report.count, report.head_hash) == (4, last.hash)
    assert report.warnings == []


@db
def test_empty_chain_is_ok():
    report = trail.verify_chain()
    assert (report.ok, report.count, report.head_hash) == (True, 0, GENESIS_HASH)


@db
def test_json_values_survive_the_database_round_trip():
    """jsonb rewrites numbers (1e20 -> integer); the hash must cover what verification reads."""
    data = {"big": 1e20, "tiny": 1e-7, "neg0": -0.0, "one": 1.0, "int": 2**70, "s": "é\u2028\"\\",
            "nested": {"b": [1, 2.5, None, True], "a": {}}}
    trail.record("test.numbers", None, "", data)
    assert trail.verify_chain().ok
    assert AuditEvent.objects.get().data["s"] == "é\u2028\"\\"


@db
@pytest.mark.parametrize(("action", "actor", "target", "data", "error"), [
    ("Study Created", None, "", None, ValueError),
    ("", None, "", None, ValueError),
    ("x." + "y" * 100, None, "", None, ValueError),
    ("study.created", None, "t" * 201, None, ValueError),
    ("study.created", "", "", None, ValueError),
    ("study.created", 42, "", None, TypeError),
    ("study.created", None, "", {"eps": float("nan")}, ValueError),
    ("study.created", None, "", {"eps": float("inf")}, ValueError),
    ("study.created", None, "", {"blob": b"bytes"}, ValueError),
    ("study.created", None, "", ["not", "a", "dict"], TypeError),
])
def test_record_refuses_bad_input(action, actor, target, data, error):
    with pytest.raises(error):
        trail.record(action, actor, target, data)
    assert not AuditEvent.objects.exists()


@db
def test_event_rolls_back_with_the_change_it_records():
    trail.record("test.kept")
    with contextlib.suppress(RuntimeError), transaction.atomic():
        trail.record("test.rolled_back")
        raise RuntimeError("the state change failed")
    trail.record("test.after")
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["test.kept", "test.after"]
    assert trail.verify_chain().ok


@db
def test_orm_refuses_changes_and_deletes():
    make_chain(3)
    event = AuditEvent.objects.get(seq=2)
    event.actor = "mallory"
    with pytest.raises(AppendOnlyError, match="append-only"):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.save(update_fields=["actor"])
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.update(actor="mallory")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(seq=2).update(actor="mallory")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(seq=2).delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_update([event], ["actor"])
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_create([AuditEvent(seq=9)])
    with pytest.raises(AppendOnlyError, match=r"audit\.trail\.record"):
        AuditEvent.objects.create(seq=4, action="x.y", actor="mallory", prev_hash="f" * 64)
    assert AuditEvent.objects.count() == 3
    assert trail.verify_chain().ok


@db
def test_database_trigger_refuses_raw_sql():
    if connection.vendor != "postgresql":
        pytest.skip("the trigger exists on PostgreSQL only")
    make_chain(2)
    for sql in (f"UPDATE {TABLE} SET data = '{{}}'", f"DELETE FROM {TABLE} WHERE seq = 1"):  # noqa: S608
        with pytest.raises(DatabaseError, match=r"append-only: (UPDATE|DELETE) refused"), \
                transaction.atomic():
            raw(sql)
    assert AuditEvent.objects.count() == 2
    assert trail.verify_chain().ok


@db
def test_changed_data_is_a_hash_mismatch():
    make_chain(5)
    with as_table_owner():
        raw(f"UPDATE {TABLE} SET data = %s WHERE seq = 3", ['{"i": 99}'])  # noqa: S608
    assert problem() == "seq 3: hash mismatch (content changed)"
    report = trail.verify_chain()
    assert (report.problem_seq, report.count) == (3, 2)


@db
def test_changed_actor_with_recomputed_hash_is_a_bad_signature():
    """Without the key, fixing up the hash still leaves the signature wrong."""
    make_chain(3)
    event = AuditEvent.objects.get(seq=3)
    event.actor = "mallory"
    with as_table_owner():
        raw(f"UPDATE {TABLE} SET actor = %s, hash = %s WHERE seq = 3",  # noqa: S608
            ["mallory", event.compute_hash()])
    assert problem() == "seq 3: bad signature"


@db
def test_forged_signature_is_found():
    make_chain(4)
    event = AuditEvent.objects.get(seq=2)
    forged = sign(Ed25519PrivateKey.generate(), event.signed_payload())
    with as_table_owner():
        raw(f"UPDATE {TABLE} SET signature = %s WHERE seq = 2", [forged])  # noqa: S608
    assert problem() == "seq 2: bad signature"


@db
def test_deleted_event_is_missing():
    make_chain(5)
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq = 3")  # noqa: S608
    assert problem().startswith("seq 3: missing event (gap in seq")


@db
def test_deleted_first_event_is_missing():
    make_chain(3)
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq = 1")  # noqa: S608
    assert problem().startswith("seq 1: missing event")


@db
def test_deleted_and_renumbered_is_a_broken_link():
    make_chain(4)
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq = 2")  # noqa: S608
        raw(f"UPDATE {TABLE} SET seq = seq + 1000 WHERE seq > 2")  # noqa: S608 (two steps: seq is unique)
        raw(f"UPDATE {TABLE} SET seq = seq - 1001 WHERE seq > 1000")  # noqa: S608
    assert problem() == "seq 2: broken link (prev_hash does not match)"


@db
def test_swapped_events_are_reordered():
    make_chain(6)
    with as_table_owner():
        raw(f"UPDATE {TABLE} SET seq = 1000 WHERE seq = 3")  # noqa: S608
        raw(f"UPDATE {TABLE} SET seq = 3 WHERE seq = 5")  # noqa: S608
        raw(f"UPDATE {TABLE} SET seq = 5 WHERE seq = 1000")  # noqa: S608
    assert problem() == "seq 3: reordered (its predecessor is the event stored at seq 4, not seq 2)"


@db
def test_anchor_finds_a_cut_tail():
    make_chain(4)
    head = trail.verify_chain().head_hash
    assert trail.verify_chain(anchor=head).ok
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq = 4")  # noqa: S608
    assert trail.verify_chain().ok  # a hash chain alone cannot see this
    report = trail.verify_chain(anchor=head)
    assert not report.ok and f"anchor {head} is not in the chain" in report.first_problem


@db
def test_verify_audit_command(capsys):
    events = make_chain(3)
    call_command("verify_audit")
    assert capsys.readouterr().out.strip() == f"audit chain OK: 3 events, head {events[-1].hash}"
    with as_table_owner():
        raw(f"UPDATE {TABLE} SET target = 'thing:x' WHERE seq = 2")  # noqa: S608
    with pytest.raises(CommandError, match=r"seq 2: hash mismatch \(content changed\)") as exc:
        call_command("verify_audit")
    assert exc.value.returncode == 1  # manage.py exits with it


@db
def test_node_key_signs_and_allowed_earlier_keys_are_warned(settings, tmp_path, capsys):
    """A foreign signer fails by default (test_peer_anchoring); one allowed as an earlier key warns."""
    trail.record("test.ephemeral")  # no node folder: the per-process ephemeral key
    earlier = trail.public_key_b64(trail.signing_key())
    node = create_node(tmp_path / "node", "datasite", "site-a", "http://127.0.0.1:8101")
    settings.NODE_DIR = node.dir
    event = trail.record("test.node")
    assert event.signer_key == node.public_keys()["signing_key"] == trail.node_public_key()
    assert not trail.verify_chain().ok
    report = trail.verify_chain(allowed_signers=[earlier])
    assert report.ok and report.count == 2
    assert report.warnings and "1 event(s) signed by a key that is not this node's" in report.warnings[0]
    call_command("verify_audit", "--allow-signer", earlier)
    assert "warning: 1 event(s)" in capsys.readouterr().err
    with pytest.raises(CommandError, match="--strict"):
        call_command("verify_audit", "--allow-signer", earlier, "--strict")
    settings.FEDSILO_AUDIT_ALLOWED_SIGNERS = [earlier]  # the node-wide setting does the same
    assert trail.verify_chain().warnings == report.warnings


@db
def test_sqlite_settings_serialise_writers():
    assert trail.check_sqlite_transaction_mode() == []
    if connection.vendor == "sqlite":
        assert connection.settings_dict["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def append_concurrently(using: str, threads: int = 8, each: int = 10) -> list[BaseException]:
    """``threads`` writers, released together, each appending ``each`` events on its own connection."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(each):
                trail.record("test.concurrent", f"writer-{t}", f"n:{i}", {"t": t, "i": i}, using=using)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections[using].close()

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


def assert_one_chain(using: str, n: int) -> None:
    report = trail.verify_chain(using=using)
    assert report.ok, report.first_problem
    assert report.count == AuditEvent.objects.using(using).count() == n
    assert list(AuditEvent.objects.using(using).values_list("seq", flat=True)) == list(range(1, n + 1))


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_make_one_chain():
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("the in-memory test database's shared cache fails lock waits at once "
                    "(SQLITE_LOCKED); test_concurrent_appends_on_a_sqlite_file covers SQLite")
    assert append_concurrently("default") == []
    assert_one_chain("default", 80)


def test_concurrent_appends_on_a_sqlite_file(settings, tmp_path, django_db_blocker):
    """A node's real SQLite set-up (a file, WAL, IMMEDIATE transactions) serialises writers."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite settings only")
    assert settings.DATABASES["default"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    alias = "audit_file"  # a database of its own, outside the test database's set-up
    connections.settings[alias] = {**settings.DATABASES["default"], "NAME": str(tmp_path / "db.sqlite3")}
    try:
        with django_db_blocker.unblock():
            with connections[alias].schema_editor() as editor:
                editor.create_model(AuditEvent)
            assert append_concurrently(alias) == []
            assert_one_chain(alias, 80)
    finally:
        connections[alias].close()
        del connections[alias]
        del connections.settings[alias]


@db
def test_sign_in_sign_out_and_failed_sign_in_are_events(client):
    get_user_model().objects.create_user("erin", password="correct horse battery")
    response = client.post("/accounts/login/", {"username": "erin", "password": "wrong password 1"},
                           REMOTE_ADDR="10.0.0.7")
    assert response.status_code == 200
    assert client.login(username="erin", password="correct horse battery")
    client.logout()
    assert authenticate(username="nobody", password="secret-guess") is None
    events = list(AuditEvent.objects.values_list("action", "actor", "target", "data"))
    assert events[0] == ("auth.login_failed", "anonymous", "user:erin",
                         {"username": "erin", "ip": "10.0.0.7"})
    assert events[1][:3] == ("auth.login", "erin", "user:erin")
    assert events[2][:3] == ("auth.logout", "erin", "user:erin")
    assert events[3][:3] == ("auth.login_failed", "anonymous", "user:nobody")
    assert len(events) == 4
    dump = str(events)
    assert "wrong password" not in dump and "correct horse" not in dump and "secret-guess" not in dump
    assert trail.verify_chain().ok
