"""Canonical JSON and Ed25519 signatures over it (join requests, audit events, reports)."""

import base64
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def canonical_json(obj: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign(key: Ed25519PrivateKey, obj: Any) -> str:
    return base64.b64encode(key.sign(canonical_json(obj))).decode()


def verify(public_key_b64: str, obj: Any, signature_b64: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(base64.b64decode(signature_b64), canonical_json(obj))
    except (InvalidSignature, ValueError):
        return False
    return True
