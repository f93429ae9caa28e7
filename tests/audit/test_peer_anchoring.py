"""The chain anchored at peers: a cut tail or a rewrite re-signed with the node's own key passes
the chain's own checks but not the heads a peer kept; a foreign signer fails; the key may live
outside the node folder."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import heads, peers, trail
from audit.models import AuditEvent
from common.node import NodeError, create_node, load_node
from common.signing import sign
from datasite.models import OrchestratorLink
from tests.audit.peer_fixtures import joined_site, peer_account
from tests.audit.test_audit import TABLE, as_table_owner, make_chain, raw

db = pytest.mark.django_db


@pytest.fixture
def node(settings, tmp_path):
    """This process is a node with a folder: its key is pinned."""
    config = create_node(tmp_path / "node", "orchestrator", "orch", "http://127.0.0.1:8100")
    settings.NODE_DIR, settings.NODE_NAME = config.dir, "orch"
    return config


def this_node_as_peer() -> peers.Peer:
    """How a peer sees this node: its name and its pinned (own) key."""
    return peers.Peer("orchestrator:orch", trail.public_key_b64(trail.signing_key()), list)


def peer_saw_head() -> list:
    """A peer keeps this node's current head, as its middleware does; what it would answer."""
    seen = this_node_as_peer()
    last = AuditEvent.objects.order_by("-seq").first()
    peers.record_head(seen, heads.sign_head(last.seq, last.hash))
    return [h.to_dict() for h in peers.kept_heads(seen)]


def check(kept: list) -> peers.PeerCheck:
    return peers.check_heads("datasite:site-a", kept, peers.own_keys())


def resign_from(seq: int, data: dict) -> None:
    """Rewrite event ``seq``'s data and re-chain and re-sign it and all after it with this node's key."""
    prev = AuditEvent.objects.get(seq=seq).prev_hash
    for event in AuditEvent.objects.filter(seq__gte=seq).order_by("seq"):
        if event.seq == seq:
            event.data = data
        event.prev_hash = prev
        event.hash = event.compute_hash()
        signature = sign(trail.signing_key(), event.signed_payload())
        with as_table_owner():
            raw(f"UPDATE {TABLE} SET data = %s, prev_hash = %s, hash = %s, signature = %s "  # noqa: S608
                "WHERE seq = %s", [json.dumps(event.data), event.prev_hash, event.hash, signature, event.seq])
        prev = event.hash


@db
@pytest.mark.adversarial
def test_a_cut_tail_passes_the_chain_but_not_the_peers_head(node):
    make_chain(5)
    kept = peer_saw_head()
    assert trail.verify_chain().ok and check(kept).problems == []
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq >= 4")  # noqa: S608
    assert trail.verify_chain().ok  # the chain alone cannot see it
    problems = check(kept).problems
    assert len(problems) == 1 and "saw head #5" in problems[0] and "the chain ends at #3" in problems[0]


@db
@pytest.mark.adversarial
def test_a_cut_and_regrown_tail_is_a_rewrite(node):
    make_chain(5)
    kept = peer_saw_head()
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq >= 4")  # noqa: S608
    make_chain(3)  # seq 4 to 6 again, other events
    assert trail.verify_chain().ok
    assert "the chain was rewritten" in check(kept).problems[0]


@db
@pytest.mark.adversarial
def test_a_rewrite_resigned_with_the_nodes_own_key_is_caught_by_the_peers_head(node):
    make_chain(5)
    kept = peer_saw_head()
    resign_from(3, {"i": "changed"})
    assert AuditEvent.objects.get(seq=3).data == {"i": "changed"}
    report = trail.verify_chain()
    assert report.ok and report.warnings == []  # signed by the pinned key: the chain alone passes
    problems = check(kept).problems
    assert len(problems) == 1 and "event #5 here has hash" in problems[0] and "rewritten" in problems[0]


@db
@pytest.mark.adversarial
def test_heads_not_signed_by_this_node_do_not_count(node):
    make_chain(2)
    kept = peer_saw_head()
    forged = {**kept[-1], "seq": 99}  # a lying peer cannot frame the node
    result = check([forged])
    assert result.problems == [] and result.checked == 0 and "not signed by this node" in result.warnings[0]


@db
@pytest.mark.adversarial
def test_a_foreign_signer_fails_by_default_an_allowed_earlier_key_warns(node):
    make_chain(2)
    mallory = Ed25519PrivateKey.generate()
    event = AuditEvent.objects.get(seq=2)
    event.signer_key = trail.public_key_b64(mallory)
    event.hash = event.compute_hash()
    with as_table_owner():
        raw(f"UPDATE {TABLE} SET signer_key = %s, hash = %s, signature = %s WHERE seq = 2",  # noqa: S608
            [event.signer_key, event.hash, sign(mallory, event.signed_payload())])
    report = trail.verify_chain()
    assert not report.ok and report.problem_seq == 2 and "foreign signer" in report.first_problem
    with pytest.raises(CommandError, match="foreign signer"):
        call_command("verify_audit")
    rotated = trail.verify_chain(allowed_signers=[event.signer_key])
    assert rotated.ok and "1 event(s) signed by a key that is not this node's" in rotated.warnings[0]
    call_command("verify_audit", "--allow-signer", event.signer_key)
    with pytest.raises(CommandError, match="--strict"):
        call_command("verify_audit", "--allow-signer", event.signer_key, "--strict")


def test_the_signing_key_may_live_outside_the_node_folder(tmp_path):
    config = create_node(tmp_path / "node", "datasite", "site-a", "http://127.0.0.1:8101")
    outside = tmp_path / "vault" / "signing.pem"
    outside.parent.mkdir()
    (config.dir / "keys" / "signing.pem").rename(outside)
    moved = load_node(config.dir, outside)
    assert moved.signing_key_file == outside and moved.public_keys()["signing_key"]
    with pytest.raises(NodeError, match="does not exist"):
        load_node(config.dir, tmp_path / "nowhere.pem")


@db
def test_signing_key_follows_the_setting(node, settings, tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "elsewhere.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    settings.FEDSILO_SIGNING_KEY_FILE = str(path)
    assert trail.record("test.elsewhere").signer_key == trail.public_key_b64(key) == trail.node_public_key()


@pytest.mark.django_db(transaction=True)
@pytest.mark.adversarial
def test_verify_audit_peers_asks_a_real_peer_over_http(node, live_server, capsys):
    """One database plays both nodes: the datasite at ``live_server`` kept this orchestrator's
    heads (its middleware records the head every request carries) and answers them."""
    _, orchestrator_token = peer_account("node.orchestrator")
    _, site_token = joined_site(key=trail.signing_key(), url=live_server.url,
                                callback_token=orchestrator_token)
    OrchestratorLink.objects.create(name="orch", url=live_server.url, token=site_token, kex_key="k",
                                    signing_key=trail.public_key_b64(trail.signing_key()))
    make_chain(5)
    head = AuditEvent.objects.count()  # the chain, and the tokens issued above
    call_command("verify_audit", "--peers")  # each request carried the head: the peer kept it
    out = capsys.readouterr().out
    assert "peers' heads OK" in out and "datasite:site-a: 1 head(s)" in out
    assert [h.seq for h in peers.kept_heads(this_node_as_peer())] == [head]
    with as_table_owner():
        raw(f"DELETE FROM {TABLE} WHERE seq >= 4")  # noqa: S608
    assert trail.verify_chain().ok
    with pytest.raises(CommandError, match=rf"datasite:site-a saw head #{head} .* the chain ends at #3"):
        call_command("verify_audit", "--peers")


def test_a_key_left_in_the_folder_is_a_system_check_warning(node, settings, tmp_path):
    assert trail.check_signing_key_outside() == []
    settings.FEDSILO_SIGNING_KEY_FILE = str(node.dir / "keys" / "signing.pem")
    assert [w.id for w in trail.check_signing_key_outside()] == ["audit.W002"]
