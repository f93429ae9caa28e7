"""The tamper-evident audit log: an append-only, hash-chained, signed sequence of events.

Rows are written only by :func:`audit.trail.record`. The ORM refuses to change or
remove them (``save()`` of an existing row, ``delete()``, ``QuerySet.update/delete``, bulk
operations); on PostgreSQL a trigger refuses ``UPDATE`` and ``DELETE`` as well
(migration 0002). Whatever slips past both is caught by :func:`audit.trail.verify_chain`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from django.db import models

from common.signing import canonical_json

GENESIS_HASH = "0" * 64
SIGNATURE_DOMAIN = "fedsilo.audit_event.v1"


class AppendOnlyError(Exception):
    """An attempt to change or remove an audit event, or to write one outside ``trail.record``."""


def canonical_time(at: dt.datetime) -> str:
    """The timestamp as it enters the hash: UTC, ISO 8601, always with microseconds."""
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


class AuditEventQuerySet(models.QuerySet):
    """Reads only: bulk writes would bypass the chain, bulk changes would break it."""

    def update(self, **kwargs: Any) -> int:
        raise AppendOnlyError("audit events are append-only: update() is refused")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError("audit events are append-only: delete() is refused")

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        raise AppendOnlyError("audit events are append-only: bulk_update() is refused")

    def bulk_create(self, *args: Any, **kwargs: Any) -> list:
        raise AppendOnlyError("audit events are appended one by one with audit.trail.record()")

    def update_or_create(self, *args: Any, **kwargs: Any) -> tuple:
        raise AppendOnlyError("audit events are append-only: update_or_create() is refused")


class AuditEvent(models.Model):
    """One link of the chain. ``hash`` covers every other field but ``signature``."""

    seq = models.PositiveBigIntegerField(unique=True, editable=False)
    at = models.DateTimeField(db_index=True, editable=False)
    actor = models.CharField(max_length=150, editable=False)  # username, "system" or a peer node name
    action = models.CharField(max_length=100, db_index=True, editable=False)  # e.g. "consent.withdrawn"
    target = models.CharField(max_length=200, blank=True, db_index=True, editable=False)  # "study:42"
    data = models.JSONField(default=dict, blank=True, editable=False)
    prev_hash = models.CharField(max_length=64, unique=True, editable=False)  # one successor per event
    hash = models.CharField(max_length=64, unique=True, editable=False)
    signature = models.CharField(max_length=100, editable=False)  # Ed25519, base64
    signer_key = models.CharField(max_length=64, editable=False)  # raw Ed25519 public key, base64

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        get_latest_by = "seq"
        db_table = "compliance_auditevent"  # the table keeps its name from before the move to audit

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor} on {self.target or '-'}"

    def save(self, **kwargs: Any) -> None:
        if not self._state.adding or kwargs.get("force_update") or kwargs.get("update_fields"):
            raise AppendOnlyError(f"audit event #{self.seq} is append-only: it cannot be changed")
        if not self.signature or self.hash != self.compute_hash():
            raise AppendOnlyError("audit events are written with audit.trail.record(), not directly")
        kwargs["force_insert"] = True
        super().save(**kwargs)

    def delete(self, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AppendOnlyError(f"audit event #{self.seq} is append-only: it cannot be deleted")

    def canonical_record(self) -> dict[str, Any]:
        """The fields the hash covers, in the form they are hashed."""
        return {
            "seq": self.seq,
            "at": canonical_time(self.at),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "signer_key": self.signer_key,
        }

    def compute_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`canonical_record`."""
        return hashlib.sha256(canonical_json(self.canonical_record())).hexdigest()

    def signed_payload(self) -> dict[str, str]:
        """What the signature covers: the hash, with a domain tag so it means nothing elsewhere."""
        return {"type": SIGNATURE_DOMAIN, "hash": self.hash}


class PeerHead(models.Model):
    """A peer node's signed audit head as this node received it (see :mod:`audit.peers`).

    One row per peer and ``seq``: the heads a peer showed, highest last, so that the peer can
    later ask what it showed (``GET /api/audit/heads/mine``) and find its own tail cut or rewritten.
    """

    peer = models.CharField(max_length=100)  # "datasite:site-a", "orchestrator:orch"
    node = models.CharField(max_length=150)  # the name the head itself carries
    seq = models.PositiveBigIntegerField()
    hash = models.CharField(max_length=64)
    at = models.DateTimeField()  # when the peer signed it
    signature = models.CharField(max_length=100)  # Ed25519 by the peer's pinned key, base64
    signer_key = models.CharField(max_length=64)  # the pinned key it verified under
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["peer", "seq"]
        constraints = [models.UniqueConstraint(fields=["peer", "seq"], name="audit_peerhead_one_per_seq")]

    def __str__(self) -> str:
        return f"{self.peer} #{self.seq} {self.hash[:12]}"
