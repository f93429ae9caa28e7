"""Helpers for the peer-head tests: a peer node's account, token and key in this database."""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audit import peers, trail
from audit.heads import SignedHead
from audit.models import canonical_time
from common.models import ApiToken
from common.roles import PEER_NODE
from common.signing import sign
from orchestrator.models import Datasite
from orchestrator.sites import site_peer

# a fixed key and time: the known answers below
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def signed(key: Ed25519PrivateKey, seq: int, digest: str, at: dt.datetime = AT,
           node: str = "site-a") -> SignedHead:
    """A head as the node holding ``key`` signs it."""
    unsigned = SignedHead(node=node, seq=seq, hash=digest, at=canonical_time(at), sig="")
    return SignedHead(**{**unsigned.to_dict(), "sig": sign(key, unsigned.payload())})


def peer_account(username: str) -> tuple[object, str]:
    """A peer node's account (role peer_node) and a raw API token for it."""
    user = get_user_model().objects.create_user(username)
    user.groups.add(Group.objects.get_or_create(name=PEER_NODE)[0])  # flushed by transactional tests
    return user, ApiToken.issue(user, "peer")[1]


def joined_site(name: str = "site-a", key: Ed25519PrivateKey = KEY, url: str = "http://127.0.0.1:9",
                callback_token: str = "") -> tuple[Datasite, str]:
    """A datasite joined to this (orchestrator) node with ``key`` pinned; its raw token."""
    user, raw = peer_account(f"node.{name}")
    site = Datasite.objects.create(name=name, account=user, status=Datasite.Status.JOINED, url=url,
                                   signing_key=trail.public_key_b64(key), callback_token=callback_token)
    return site, raw


def as_peer(site: Datasite) -> peers.Peer:
    return site_peer(site)
