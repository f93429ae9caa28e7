"""Peer nodes' audit heads: kept when they arrive, checked against this node's chain on demand.

The audit layer does not know the apps' models: the orchestrator and datasite apps each
:func:`register` a :class:`PeerDirectory` at start-up, which says which peer an authenticated
account is (with the signing key pinned for it at join) and which peers there are to ask.

Receiving (:func:`receive_head`, from :class:`audit.middleware.PeerHeadMiddleware`): a head
that verifies under the peer's pinned key and goes beyond the highest one kept is stored; one
that names another hash at a ``seq`` already kept (a fork: the peer's log was rewritten, or cut
and regrown), or a lower ``seq`` signed later than the highest kept (its tail was cut), is an
alarm event in this node's own log. A missing or bad head never fails the request: a peer of
an older version sends none, and a token thief could simply omit it; it is logged, and an audit
event records the first one after each valid head.

Checking (:func:`check_heads`): the heads a peer kept *for this node* must be in this node's
chain: a ``seq`` beyond its end means events were cut off, another hash at a ``seq`` means a
rewrite, even one re-signed with the node's own key.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import IntegrityError, transaction

from audit import trail
from audit.heads import BadHead, SignedHead
from audit.models import AuditEvent, PeerHead, canonical_time

log = logging.getLogger(__name__)
KEEP = 256  # heads kept per peer (the highest; only the highest is needed to check a chain)
CLOCK_SLACK = dt.timedelta(seconds=5)  # concurrent requests may arrive out of order


class PeerUnreachable(Exception):
    """A peer did not answer or refused (the directory's client error, in the audit layer's words)."""


@dataclass(frozen=True)
class Peer:
    """A peer node: its name here (``"datasite:site-a"``), its pinned key, how to ask it."""

    name: str
    signing_key: str
    fetch_heads: Callable[[], Any] = field(compare=False, repr=False)  # raises PeerUnreachable


class PeerDirectory(Protocol):
    """What an app tells the audit layer about its peers."""

    def peer_for(self, user: Any) -> Peer | None:
        """The joined peer this authenticated account is, or None."""

    def peers(self) -> list[Peer]:
        """Every joined peer."""


_directories: list[PeerDirectory] = []


def register(directory: PeerDirectory) -> None:
    """Called from an app's ``ready()``; idempotent."""
    if directory not in _directories:
        _directories.append(directory)


def peer_for(user: Any) -> Peer | None:
    """The peer node behind an authenticated account (one with a pinned key), or None."""
    return next((p for d in _directories if (p := d.peer_for(user)) is not None), None)


def all_peers() -> list[Peer]:
    return [p for d in _directories for p in d.peers()]


def row_head(row: PeerHead) -> SignedHead:
    """A kept head as the peer signed it."""
    return SignedHead(node=row.node, seq=row.seq, hash=row.hash, at=canonical_time(row.at), sig=row.signature)


def kept_heads(peer: Peer) -> list[SignedHead]:
    """The heads this node kept for ``peer``, lowest ``seq`` first."""
    return [row_head(r) for r in PeerHead.objects.filter(peer=peer.name).order_by("seq")]


def _alarm(action: str, peer: Peer, data: dict[str, Any]) -> None:
    log.warning("audit head of %s: %s %s", peer.name, action, data)
    trail.record(action, None, peer.name, data)


def _alarm_once(action: str, peer: Peer, data: dict[str, Any]) -> None:
    """An alarm event unless one with this action was recorded since the peer's last new head."""
    last_head = PeerHead.objects.filter(peer=peer.name).order_by("-received_at").values("received_at").first()
    since = AuditEvent.objects.filter(action=action, target=peer.name)
    if last_head:
        since = since.filter(at__gte=last_head["received_at"])
    if since.exists():
        log.warning("audit head of %s: %s %s (already recorded)", peer.name, action, data)
    else:
        _alarm(action, peer, data)


def receive_head(peer: Peer, value: str | None) -> str:
    """Handle the head header of a request from ``peer``; the outcome, for logs and tests.

    ``"missing"``, ``"invalid"``, or what :func:`record_head` answers.
    """
    if value is None:
        if PeerHead.objects.filter(peer=peer.name).exists():  # it sent heads before: a downgrade
            _alarm_once("audit.peer_head_missing", peer, {})
        else:
            log.info("%s sent no audit head (an older version?)", peer.name)
        return "missing"
    try:
        head = SignedHead.decode(value)
        if not head.verifies(peer.signing_key):
            raise BadHead("the signature does not verify under the key pinned at join")
    except BadHead as exc:
        _alarm_once("audit.peer_head_invalid", peer, {"error": str(exc)[:300], "header": value[:300]})
        return "invalid"
    return record_head(peer, head)


def record_head(peer: Peer, head: SignedHead) -> str:
    """Keep a head that verified under ``peer``'s pinned key (see the module docstring).

    Answers ``"new"``, ``"known"`` (kept already), ``"stale"`` (lower, overtaken in flight),
    ``"conflict"`` or ``"backwards"`` (both alarms).
    """
    with transaction.atomic():
        kept = PeerHead.objects.filter(peer=peer.name)
        same_seq = kept.filter(seq=head.seq).first()
        if same_seq is not None:
            if same_seq.hash == head.hash:
                return "known"
            _alarm("audit.peer_head_conflict", peer,
                   {"kept": row_head(same_seq).to_dict(), "received": head.to_dict()})
            return "conflict"
        highest = kept.order_by("-seq").first()
        if highest is not None and head.seq < highest.seq:
            if head.at_time() <= highest.at + CLOCK_SLACK:
                return "stale"
            _alarm("audit.peer_head_backwards", peer, {"highest_seq": highest.seq,
                                                      "highest_at": canonical_time(highest.at),
                                                      "received": head.to_dict()})
            return "backwards"
        try:
            with transaction.atomic():
                PeerHead.objects.create(peer=peer.name, node=head.node, seq=head.seq, hash=head.hash,
                                        at=head.at_time(), signature=head.sig, signer_key=peer.signing_key)
        except IntegrityError:  # a head at this seq arrived on a concurrent request: compare
            return record_head(peer, head)
        cutoff = kept.order_by("-seq").values_list("seq", flat=True)[KEEP:KEEP + 1].first()
        if cutoff is not None:
            kept.filter(seq__lte=cutoff).delete()
    return "new"


@dataclass
class PeerCheck:
    """What :func:`check_heads` found for one peer."""

    peer: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_heads(peer: str, heads: Iterable[Any], own_keys: Iterable[str]) -> PeerCheck:
    """Check the heads ``peer`` kept for this node against this node's chain.

    ``heads``: the peer's answer (dicts or :class:`SignedHead`); only heads signed by one of
    ``own_keys`` (this node's key, earlier allowed ones) count, others are warned about.
    """
    keys = list(own_keys)
    result = PeerCheck(peer)
    last = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    for item in heads:
        try:
            head = item if isinstance(item, SignedHead) else SignedHead.from_dict(item)
        except BadHead as exc:
            result.warnings.append(f"{peer} answered a malformed head ({exc}): ignored")
            continue
        if not any(head.verifies(k) for k in keys):
            result.warnings.append(f"{peer} answered a head #{head.seq} not signed by this node: ignored")
            continue
        result.checked += 1
        if head.seq == 0:
            continue
        local = AuditEvent.objects.filter(seq=head.seq).values_list("hash", flat=True).first()
        if local is None and head.seq > last:
            result.problems.append(
                f"{peer} saw head #{head.seq} ({head.hash}) at {head.at}, but the chain ends at #{last}: "
                f"events were removed from its end")
        elif local != head.hash:
            result.problems.append(
                f"{peer} saw head #{head.seq} with hash {head.hash} at {head.at}, but event #{head.seq} "
                f"here has hash {local}: the chain was rewritten (even if re-signed)")
    return result


def own_keys() -> list[str]:
    """The keys this node's heads may be signed with: its own, and allowed earlier ones."""
    return [trail.public_key_b64(trail.signing_key()), *trail.allowed_signers_setting()]


def check_peer(peer: Peer, keys: Iterable[str]) -> PeerCheck:
    """Ask ``peer`` what it kept for this node and check it (see :func:`check_heads`);
    unreachable is a warning."""
    try:
        answer = peer.fetch_heads()
    except PeerUnreachable as exc:
        return PeerCheck(peer.name, warnings=[f"{peer.name} could not be asked: {exc}"])
    heads = answer.get("heads") if isinstance(answer, dict) else None
    if not isinstance(heads, list):
        return PeerCheck(peer.name, warnings=[f"{peer.name} answered no list of heads"])
    return check_heads(peer.name, heads, keys)
