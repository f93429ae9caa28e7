"""Exceptions raised by the secure-aggregation library (one hierarchy)."""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every secure-aggregation error."""


class ProtocolError(SecAggError):
    """A message is malformed, out of phase, for another round, or from an unexpected site."""


class SignatureError(ProtocolError):
    """A key advertisement's Ed25519 signature does not verify against the site's long-term key."""


class DecryptionError(ProtocolError):
    """An encrypted share failed AES-GCM authentication (tampered, misrouted or replayed)."""


class ThresholdError(ProtocolError):
    """Too few sites remain for the threshold: the round cannot (safely) complete."""
