"""Key material: per-round X25519 pairs, Ed25519-signed adverts, HKDF pairwise keys, AES-GCM shares.

Every derived key and every signature is bound to its context by an unambiguous
length-prefixed encoding of (domain label, round id, site ids, ...).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import shamir
from .errors import DecryptionError, ProtocolError, SignatureError

DOMAIN = b"fedsilo-secagg/v1"
PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12


def encode_context(*parts: str | bytes) -> bytes:
    """Length-prefixed concatenation (u32 big-endian length, then bytes; str as UTF-8)."""
    out = bytearray()
    for part in parts:
        data = part.encode() if isinstance(part, str) else bytes(part)
        out += struct.pack(">I", len(data)) + data
    return bytes(out)


# ---- per-round X25519 key pairs -------------------------------------------------------------


def new_x25519_key() -> X25519PrivateKey:
    """A fresh X25519 key whose 32 raw bytes, read little-endian, are a Shamir field element."""
    return x25519_from_int(shamir.random_element())


def x25519_to_int(key: X25519PrivateKey) -> int:
    return int.from_bytes(key.private_bytes_raw(), "little")


def x25519_from_int(value: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(value.to_bytes(32, "little"))


def public_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(own: X25519PrivateKey, peer_public: bytes, purpose: str, round_id: str, a: str, b: str) -> bytes:
    """32-byte key = HKDF-SHA256(X25519(own, peer), info=(purpose, round, sorted pair))."""
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # wrong length or low-order point
        raise ProtocolError(f"unusable X25519 public key: {exc}") from exc
    lo, hi = sorted((a, b))
    info = encode_context(DOMAIN, purpose, round_id, lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


# ---- signed key advertisements ---------------------------------------------------------------


def advert_payload(round_id: str, site_id: str, c_pk: bytes, s_pk: bytes, params_digest: bytes) -> bytes:
    """What a key advert's signature covers; the digest pins the round's public parameters."""
    return encode_context(DOMAIN, "advert", round_id, site_id, c_pk, s_pk, params_digest)


def load_verify_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    except ValueError as exc:
        raise SignatureError(f"not an Ed25519 public key: {exc}") from exc


def sign_advert(
    key: Ed25519PrivateKey,
    round_id: str,
    site_id: str,
    c_pk: bytes,
    s_pk: bytes,
    params_digest: bytes,
) -> bytes:
    return key.sign(advert_payload(round_id, site_id, c_pk, s_pk, params_digest))


def verify_advert(
    key: Ed25519PublicKey,
    signature: bytes,
    round_id: str,
    site_id: str,
    c_pk: bytes,
    s_pk: bytes,
    params_digest: bytes,
) -> None:
    try:
        key.verify(signature, advert_payload(round_id, site_id, c_pk, s_pk, params_digest))
    except InvalidSignature as exc:
        raise SignatureError(
            f"key advert of site {site_id!r} for round {round_id!r} has a bad signature "
            "(forged, altered, or signed for other round parameters)"
        ) from exc


# ---- AES-GCM share encryption ------------------------------------------------------------------


def share_ad(round_id: str, sender: str, receiver: str) -> bytes:
    return encode_context(DOMAIN, "share", round_id, sender, receiver)


def encrypt_share(key: bytes, round_id: str, sender: str, receiver: str, plain: bytes) -> bytes:
    """nonce (12 random bytes) || AES-256-GCM(plain) with AD (round, sender, receiver)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plain, share_ad(round_id, sender, receiver))


def decrypt_share(key: bytes, round_id: str, sender: str, receiver: str, blob: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], share_ad(round_id, sender, receiver)
        )
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(
            f"share from {sender!r} to {receiver!r} in round {round_id!r} failed authentication"
        ) from exc
