"""Signed audit heads: what a node shows its peers of its own chain.

A head is the node's last committed event (``seq``, ``hash``), its name and the time it signed,
signed with the node's Ed25519 key under a domain tag. Every request to a peer node carries one
in the :data:`HEADER` header, as URL-safe base64 of its canonical JSON; the peer keeps it
(:mod:`audit.peers`). A chain cut or rewritten afterwards no longer holds what a peer saw.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from audit import trail
from audit.models import canonical_time
from common.signing import canonical_json, sign, verify

HEADER = "X-Fedsilo-Audit-Head"
HEAD_DOMAIN = "fedsilo.audit_head.v1"
MAX_HEADER = 1000
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class BadHead(ValueError):
    """A head that is malformed or whose signature does not verify."""


@dataclass(frozen=True)
class SignedHead:
    """A node's audit head and its signature (``sig``)."""

    node: str
    seq: int
    hash: str
    at: str  # canonical UTC ISO 8601 (see audit.models.canonical_time)
    sig: str

    def payload(self) -> dict[str, Any]:
        """What the signature covers."""
        return {"type": HEAD_DOMAIN, "node": self.node, "seq": self.seq, "hash": self.hash, "at": self.at}

    def verifies(self, public_key: str) -> bool:
        return verify(public_key, self.payload(), self.sig)

    def at_time(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.at)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def encode(self) -> str:
        """The header value: URL-safe base64 of the canonical JSON."""
        return base64.urlsafe_b64encode(canonical_json(self.to_dict())).decode()

    @classmethod
    def from_dict(cls, data: Any) -> SignedHead:
        """Check the fields' types and forms (not the signature); BadHead when wrong."""
        if not isinstance(data, dict) or set(data) != {"node", "seq", "hash", "at", "sig"}:
            raise BadHead("a head has exactly the fields node, seq, hash, at, sig")
        node, seq, digest, at, sig = (data[k] for k in ("node", "seq", "hash", "at", "sig"))
        if not (isinstance(node, str) and 0 < len(node) <= 150):
            raise BadHead("head: node must be a name")
        if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
            raise BadHead("head: seq must be a non-negative integer")
        if not (isinstance(digest, str) and _HASH_RE.match(digest)):
            raise BadHead("head: hash must be 64 lowercase hex digits")
        if not (isinstance(sig, str) and len(sig) <= 100):
            raise BadHead("head: sig must be a base64 signature")
        try:
            canonical = isinstance(at, str) and canonical_time(dt.datetime.fromisoformat(at)) == at
        except ValueError:
            canonical = False
        if not canonical:
            raise BadHead("head: at must be a UTC time as audit.models.canonical_time writes it")
        return cls(node=node, seq=seq, hash=digest, at=at, sig=sig)

    @classmethod
    def decode(cls, value: str) -> SignedHead:
        """Parse a header value; BadHead when malformed."""
        if len(value) > MAX_HEADER:
            raise BadHead(f"head header longer than {MAX_HEADER} characters")
        try:
            data = json.loads(base64.urlsafe_b64decode(value.encode("ascii")))
        except (ValueError, binascii.Error, UnicodeError) as exc:
            raise BadHead(f"head header is not base64 JSON: {exc}") from exc
        return cls.from_dict(data)


def sign_head(seq: int, digest: str, at: dt.datetime | None = None) -> SignedHead:
    """This node's head at (``seq``, ``digest``), signed now (or at ``at``) with its signing key."""
    when = canonical_time(at or timezone.now())
    unsigned = SignedHead(node=settings.NODE_NAME, seq=seq, hash=digest, at=when, sig="")
    return SignedHead(**{**unsigned.to_dict(), "sig": sign(trail.signing_key(), unsigned.payload())})


def current_head(using: str = DEFAULT_DB_ALIAS) -> SignedHead:
    """This node's last committed event, signed now (the time is taken before the chain is read)."""
    now = timezone.now()
    return sign_head(*trail.committed_head(using), at=now)


def add_head_header(request: Any) -> None:
    """httpx request hook: carry this node's current signed head to the peer."""
    request.headers[HEADER] = current_head().encode()
