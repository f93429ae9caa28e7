"""Signed audit heads: known answers, the middleware that keeps a peer's head, alarms, the endpoint."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction

from audit import heads, peers, trail
from audit.heads import HEADER, BadHead, SignedHead
from audit.models import GENESIS_HASH, AuditEvent, PeerHead
from common.signing import canonical_json
from tests.audit.peer_fixtures import AT, KEY, as_peer, joined_site, peer_account, signed

db = pytest.mark.django_db
H1, H2 = "a" * 64, "b" * 64
URL = "/api/audit/heads/mine"


def test_head_known_answer():
    head = signed(KEY, 7, H1)
    assert canonical_json(head.payload()) == (
        b'{"at":"2026-01-02T03:04:05.678901+00:00","hash":"' + H1.encode()
        + b'","node":"site-a","seq":7,"type":"fedsilo.audit_head.v1"}')
    assert head.sig == signed(KEY, 7, H1).sig  # Ed25519 is deterministic
    assert head.verifies(trail.public_key_b64(KEY))
    assert SignedHead.decode(head.encode()) == head


@pytest.mark.parametrize("change", [{"seq": 8}, {"hash": H2}, {"node": "site-b"},
                                    {"at": "2026-01-02T03:04:05.678902+00:00"}])
def test_a_changed_head_does_not_verify(change):
    head = SignedHead(**{**signed(KEY, 7, H1).to_dict(), **change})
    assert not head.verifies(trail.public_key_b64(KEY))
    assert not signed(Ed25519PrivateKey.generate(), 7, H1).verifies(trail.public_key_b64(KEY))


@pytest.mark.parametrize("value", [
    "not base64 at all!", "bm90IGpzb24=",  # base64 of "not json"
    SignedHead(node="a", seq=-1, hash=H1, at="2026-01-02T03:04:05.678901+00:00", sig="x").encode(),
    SignedHead(node="a", seq=1, hash="xyz", at="2026-01-02T03:04:05.678901+00:00", sig="x").encode(),
    SignedHead(node="a", seq=1, hash=H1, at="2026-01-02T03:04:05+00:00", sig="x").encode(),
    "A" * 2000,
])
def test_malformed_headers_are_refused(value):
    with pytest.raises(BadHead):
        SignedHead.decode(value)


@pytest.mark.django_db(transaction=True)
def test_current_head_is_the_last_committed_event():
    assert heads.current_head().seq == 0 and heads.current_head().hash == GENESIS_HASH
    first = trail.record("test.one")
    with transaction.atomic():
        trail.record("test.two")
        assert (heads.current_head().seq, heads.current_head().hash) == (1, first.hash)  # may roll back
    head = heads.current_head()
    assert head.seq == 2 and head.verifies(trail.public_key_b64(trail.signing_key()))


@db
def test_middleware_keeps_a_peers_head(client):
    site, raw = joined_site()
    response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}",
                          headers={HEADER: signed(KEY, 3, H1).encode()})
    assert response.status_code == 200
    kept = PeerHead.objects.get()
    assert (kept.peer, kept.seq, kept.hash, kept.signer_key) == ("datasite:site-a", 3, H1, site.signing_key)
    assert peers.kept_heads(as_peer(site)) == [signed(KEY, 3, H1)]


@db
def test_a_forged_head_is_an_alarm_once_and_the_request_goes_on(client):
    _, raw = joined_site()
    forged = signed(Ed25519PrivateKey.generate(), 9, H1).encode()
    for _ in range(2):
        response = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}", headers={HEADER: forged})
        assert response.status_code == 200
    assert not PeerHead.objects.exists()
    alarms = AuditEvent.objects.filter(action="audit.peer_head_invalid")
    assert alarms.count() == 1 and alarms.get().target == "datasite:site-a"
    assert "does not verify" in alarms.get().data["error"]


@db
def test_a_missing_head_is_an_alarm_only_after_the_peer_sent_heads(client):
    site, raw = joined_site()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert client.get(URL, **auth).status_code == 200  # an older peer: only logged
    assert not AuditEvent.objects.filter(action="audit.peer_head_missing").exists()
    peers.record_head(as_peer(site), signed(KEY, 1, H1))
    for _ in range(2):
        assert client.get(URL, **auth).status_code == 200
    assert AuditEvent.objects.filter(action="audit.peer_head_missing").count() == 1


@db
def test_other_callers_heads_are_ignored(client):
    _, raw = peer_account("alice")
    client.get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}", headers={HEADER: signed(KEY, 3, H1).encode()})
    assert not PeerHead.objects.exists()


@db
def test_a_head_at_a_known_seq_with_another_hash_is_a_conflict():
    site, _ = joined_site()
    peer = as_peer(site)
    assert peers.record_head(peer, signed(KEY, 4, H1)) == "new"
    assert peers.record_head(peer, signed(KEY, 4, H1)) == "known"
    assert peers.record_head(peer, signed(KEY, 4, H2, AT + dt.timedelta(minutes=1))) == "conflict"
    alarm = AuditEvent.objects.get(action="audit.peer_head_conflict")
    assert alarm.data["kept"]["hash"] == H1 and alarm.data["received"]["hash"] == H2
    assert PeerHead.objects.get().hash == H1  # the first stays: the evidence


@db
def test_a_lower_head_signed_later_is_backwards_one_overtaken_in_flight_is_stale():
    site, _ = joined_site()
    peer = as_peer(site)
    peers.record_head(peer, signed(KEY, 10, H1))
    assert peers.record_head(peer, signed(KEY, 8, H2, AT - dt.timedelta(seconds=1))) == "stale"
    assert not AuditEvent.objects.filter(action__startswith="audit.peer_head").exists()
    assert peers.record_head(peer, signed(KEY, 8, H2, AT + dt.timedelta(minutes=5))) == "backwards"
    assert AuditEvent.objects.get(action="audit.peer_head_backwards").data["highest_seq"] == 10
    assert list(PeerHead.objects.values_list("seq", flat=True)) == [10]


@db
def test_only_the_highest_heads_are_kept(monkeypatch):
    monkeypatch.setattr(peers, "KEEP", 3)
    site, _ = joined_site()
    for seq in range(1, 7):
        peers.record_head(as_peer(site), signed(KEY, seq, f"{seq:064x}"))
    assert list(PeerHead.objects.values_list("seq", flat=True)) == [4, 5, 6]


@db
def test_the_endpoint_answers_the_callers_own_heads(client):
    site, raw = joined_site()
    other, _ = joined_site("site-b")
    peers.record_head(as_peer(site), signed(KEY, 2, H1))
    peers.record_head(as_peer(other), signed(KEY, 5, H2, node="site-b"))
    body = client.get(URL, HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert body == {"peer": "datasite:site-a", "heads": [signed(KEY, 2, H1).to_dict()]}
    _, alice = peer_account("alice")
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {alice}").status_code == 403
