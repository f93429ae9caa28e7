"""Append to the audit log and verify it.

Every state change is an event::

    from audit import trail
    trail.record("consent.withdrawn", request.user, "contributor:c-123", {"purpose": "policy-training"})

Each event's canonical JSON (see :meth:`AuditEvent.canonical_record`) includes the previous
event's SHA-256, so changing, removing or reordering any event breaks the chain at that point;
the hash is signed with the node's Ed25519 key. :func:`verify_chain` (and
``manage.py verify_audit``) walks the chain in constant memory and names the first problem.

A hash chain cannot see its own tail cut off: publish or sign the head hash (reports do) and
pass it back as ``anchor`` to check that nothing up to it went missing. Every message to a peer
node carries the signed head (:mod:`audit.heads`), the peers keep what they saw
(:mod:`audit.peers`) and ``verify_audit --peers`` checks the chain against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit.models import GENESIS_HASH, AuditEvent
from common.node import load_node
from common.signing import canonical_json, sign, verify

SYSTEM = "system"
ANONYMOUS = "anonymous"
ACTION_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
MAX_ACTOR, MAX_ACTION, MAX_TARGET = 150, 100, 200

# pg_advisory_xact_lock key: serialises appends on PostgreSQL until the appending transaction ends.
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(b"fedsilo.audit.trail").digest()[:8], "big", signed=True)

_keys: dict[tuple[str | None, str | None], Ed25519PrivateKey] = {}
_keys_lock = threading.Lock()


def signing_key() -> Ed25519PrivateKey:
    """The node's Ed25519 signing key (``FEDSILO_SIGNING_KEY_FILE`` or the folder's), loaded once.

    Without a node folder (unit tests, one-off commands) this is an *ephemeral* key made once
    per process: events it signs verify against their stored ``signer_key``, but no one can
    tell them from a forger's, so a real node always has a folder.
    """
    node_dir = str(settings.NODE_DIR) if settings.NODE_DIR else None
    key_file = settings.FEDSILO_SIGNING_KEY_FILE
    with _keys_lock:
        if (node_dir, key_file) not in _keys:
            node = load_node(node_dir, key_file)
            _keys[node_dir, key_file] = node.signing_key() if node else Ed25519PrivateKey.generate()
        return _keys[node_dir, key_file]


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """Raw public key, base64 (the form ``NodeConfig.public_keys`` exchanges with peers)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def node_public_key() -> str | None:
    """This node's own signing public key, or None without a node folder."""
    return public_key_b64(signing_key()) if settings.NODE_DIR else None


def allowed_signers_setting() -> list[str]:
    """Earlier (rotated) signing keys of this node: ``FEDSILO_AUDIT_ALLOWED_SIGNERS``."""
    return list(settings.FEDSILO_AUDIT_ALLOWED_SIGNERS)


def actor_name(actor: Any) -> str:
    """A User becomes its username, None ``"system"``; a string (peer node, service) stays."""
    if actor is None:
        return SYSTEM
    if isinstance(actor, str):
        name = actor.strip()
    elif hasattr(actor, "get_username") and hasattr(actor, "is_authenticated"):
        name = actor.get_username() if actor.is_authenticated else ANONYMOUS
    else:
        raise TypeError(f"audit actor must be a User, a string or None, not {type(actor).__name__}")
    if not name or len(name) > MAX_ACTOR:
        raise ValueError(f"audit actor must be 1 to {MAX_ACTOR} characters, got {name!r}")
    return name


def _normalize_data(data: Mapping[str, Any] | None, using: str) -> dict[str, Any]:
    """JSON-checked copy of ``data`` exactly as the database will give it back.

    PostgreSQL's jsonb rewrites numbers (``1e20`` comes back as an integer), so there the
    value makes one round trip through jsonb first: the hash must cover what verification reads.
    """
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TypeError(f"audit data must be a dict, not {type(data).__name__}")
    try:
        text = canonical_json(dict(data)).decode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit data must be JSON-serialisable, without NaN or infinity: {exc}") from exc
    if connections[using].vendor == "postgresql":
        if "\\u0000" in text:
            raise ValueError("audit data cannot hold NUL characters (PostgreSQL jsonb refuses them)")
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT %s::jsonb::text", [text])
            text = cursor.fetchone()[0]
    return json.loads(text)


def _lock_chain(using: str) -> None:
    """Hold the append lock until the current transaction ends (call inside ``atomic``)."""
    vendor = connections[using].vendor
    if vendor == "postgresql":
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PG_LOCK_KEY])
    elif vendor != "sqlite":  # SQLite: BEGIN IMMEDIATE (settings) already holds the write lock
        list(AuditEvent.objects.using(using).select_for_update().order_by("-seq")[:1])


def record(
    action: str,
    actor: Any = None,
    target: str = "",
    data: Mapping[str, Any] | None = None,
    *,
    using: str = DEFAULT_DB_ALIAS,
) -> AuditEvent:
    """Append one signed event to the chain and return it.

    ``action`` is a short dotted name (``"code_request.approved"``); ``actor`` a User, a
    string (peer node, service) or None for ``"system"``; ``target`` what was acted on
    (``"study:42"``); ``data`` a JSON-serialisable dict (no NaN/inf, no secrets).
    Inside the caller's transaction the event commits or rolls back with the change it
    records, and the append lock is held until then, so concurrent writers never fork the chain.
    """
    if not isinstance(action, str) or len(action) > MAX_ACTION or not ACTION_RE.match(action):
        raise ValueError(f"audit action must be a short dotted lowercase name like 'study.created', "
                         f"got {action!r}")
    if not isinstance(target, str) or len(target) > MAX_TARGET:
        raise ValueError(f"audit target must be a string of at most {MAX_TARGET} characters")
    actor_str = actor_name(actor)
    payload = _normalize_data(data, using)
    key = signing_key()
    with transaction.atomic(using=using):
        _lock_chain(using)
        last = AuditEvent.objects.using(using).order_by("-seq").values_list("seq", "hash").first()
        seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
        event = AuditEvent(
            seq=seq, at=timezone.now(), actor=actor_str, action=action, target=target,
            data=payload, prev_hash=prev_hash, signer_key=public_key_b64(key),
        )
        event.hash = event.compute_hash()
        event.signature = sign(key, event.signed_payload())
        event.save(using=using)
        transaction.on_commit(PendingEvent(seq), using=using)
    return event


@dataclass(frozen=True)
class PendingEvent:
    """Marks an appended event in its transaction's on-commit queue until that transaction ends.

    :func:`committed_head` reads the queue: a head shown to a peer must never name an event
    that may still roll back (the peer would then hold a hash this chain never had).
    """

    seq: int

    def __call__(self) -> None:
        """Committed: nothing to do; the marker leaves the queue with its transaction."""


def committed_head(using: str = DEFAULT_DB_ALIAS) -> tuple[int, str]:
    """``(seq, hash)`` of the last *committed* event (``(0, GENESIS_HASH)`` for none).

    Inside a transaction that appended events, the head before the first of them: the append
    lock held since then means every earlier event is committed.
    """
    pending = [f.seq for _, f, _ in connections[using].run_on_commit if isinstance(f, PendingEvent)]
    events = AuditEvent.objects.using(using)
    if pending:
        events = events.filter(seq__lt=min(pending))
    return events.order_by("-seq").values_list("seq", "hash").first() or (0, GENESIS_HASH)


@dataclass
class ChainReport:
    """The outcome of :func:`verify_chain`.

    ``count`` is the number of events that verified and ``head_hash`` the hash of the last of
    them (``GENESIS_HASH`` for none); on failure ``first_problem`` says where and what.
    """

    ok: bool
    count: int
    head_hash: str
    first_problem: str | None = None
    problem_seq: int | None = None
    warnings: list[str] = field(default_factory=list)


def verify_chain(
    anchor: str | None = None,
    progress: Callable[[int], Any] | None = None,
    *,
    allowed_signers: Iterable[str] = (),
    using: str = DEFAULT_DB_ALIAS,
) -> ChainReport:
    """Walk the chain in ``seq`` order (streaming) and report the first problem.

    Per event, in this order: a gap in ``seq`` ("missing event"), a ``prev_hash`` that is
    not the previous event's hash ("reordered" when it is the hash of another stored event,
    else "broken link"), a stored hash that is not the content's ("hash mismatch"), a
    signature that does not verify under the stored ``signer_key`` ("bad signature"), and,
    with a node folder, a signer other than the node's pinned key ("foreign signer"): whoever
    rewrites the log with a key of their own must not pass. Earlier keys of this node
    (``allowed_signers`` and the setting ``FEDSILO_AUDIT_ALLOWED_SIGNERS``) pass with a warning.
    ``anchor``: a head hash seen earlier; the chain must still contain it.
    ``progress`` is called with 1 per event read.
    """
    own_key = node_public_key()
    rotated = {*allowed_signers, *allowed_signers_setting()}
    prev_seq, prev_hash, count = 0, GENESIS_HASH, 0
    foreign, first_foreign = 0, None
    anchor_seen = anchor is None or anchor == GENESIS_HASH
    problem, problem_seq = None, None
    events = AuditEvent.objects.using(using)
    for event in events.order_by("seq").iterator(chunk_size=1000):
        if progress:
            progress(1)
        if event.seq != prev_seq + 1:
            problem_seq = prev_seq + 1
            problem = f"seq {problem_seq}: missing event (gap in seq: the next stored event is {event.seq})"
        elif event.prev_hash != prev_hash:
            problem_seq = event.seq
            moved = events.filter(hash=event.prev_hash).values_list("seq", flat=True).first()
            if moved is not None:
                problem = (f"seq {event.seq}: reordered (its predecessor is the event stored at "
                           f"seq {moved}, not seq {prev_seq})")
            else:
                problem = f"seq {event.seq}: broken link (prev_hash does not match)"
        elif event.compute_hash() != event.hash:
            problem_seq = event.seq
            problem = f"seq {event.seq}: hash mismatch (content changed)"
        elif not verify(event.signer_key, event.signed_payload(), event.signature):
            problem_seq = event.seq
            problem = f"seq {event.seq}: bad signature"
        elif own_key and event.signer_key not in (own_key, *rotated):
            problem_seq = event.seq
            problem = (f"seq {event.seq}: foreign signer (signed by {event.signer_key}, not by this "
                       f"node's key nor an allowed earlier one: a rewritten log)")
        if problem:
            break
        if own_key and event.signer_key != own_key:
            foreign += 1
            first_foreign = first_foreign or event.seq
        anchor_seen = anchor_seen or event.hash == anchor
        prev_seq, prev_hash, count = event.seq, event.hash, count + 1
    if problem is None and not anchor_seen:
        problem_seq = prev_seq + 1
        problem = f"anchor {anchor} is not in the chain (events removed from its end, or rewritten)"
    warnings = []
    if foreign:
        warnings.append(f"{foreign} event(s) signed by a key that is not this node's signing key "
                        f"(first at seq {first_foreign}): an allowed earlier (rotated) key")
    return ChainReport(problem is None, count, prev_hash, problem, problem_seq, warnings)


def check_signing_key_outside(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """System check: with ``FEDSILO_SIGNING_KEY_FILE`` the node folder should hold no signing key."""
    left = Path(settings.NODE_DIR) / "keys" / "signing.pem" if settings.NODE_DIR else None
    if not (settings.FEDSILO_SIGNING_KEY_FILE and left and left.exists()):
        return []
    return [checks.Warning(
        f"FEDSILO_SIGNING_KEY_FILE is set but {left} still exists",
        hint="whoever can read the node folder could re-sign its audit log: remove that copy",
        id="audit.W002",
    )]


def check_sqlite_transaction_mode(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """System check: on SQLite, appends are serialised only by IMMEDIATE transactions."""
    return [
        checks.Warning(
            f"database {alias!r} is SQLite without OPTIONS['transaction_mode'] = 'IMMEDIATE'",
            hint="concurrent audit appends may then fail with 'database is locked'",
            id="audit.W001",
        )
        for alias in connections
        if connections[alias].vendor == "sqlite"
        and str(connections.settings[alias].get("OPTIONS", {}).get("transaction_mode", "")).upper()
        != "IMMEDIATE"
    ]
