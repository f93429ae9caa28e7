"""Key ceremony: the key holder makes the CKKS key and seals it to every other datasite.

Envelope (bytes, relayed by the orchestrator, which cannot read or substitute it):

    b"FSHEKEY1" | u32 len | header JSON | AES-256-GCM ciphertext of SecretContext.data | sig

header = {"v", "alg", "study_id", "sender", "recipient", "recipient_pk", "epk", "nonce",
"key_id"} as compact sorted JSON. The AES key is HKDF-SHA256(X25519(ephemeral, recipient),
salt = domain label, info = header bytes); the AES-GCM associated data is magic ‖ len ‖
header, so study, sender, recipient, both X25519 public keys and the key id are bound.
sig is the sender's long-term Ed25519 signature over domain label ‖ everything before it.
The recipient must take the sender's Ed25519 key from its own pinned peer registry (made
at join time), not from the message that carries the envelope.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .context import HEError, SecretContext

MAGIC = b"FSHEKEY1"
ALG = "X25519-HKDF-SHA256-AES256GCM/Ed25519"
_DOMAIN = b"fedsilo/he/envelope/v1\x00"
_LEN = struct.Struct("<I")
_SIG_BYTES = 64
_NONCE_BYTES = 12
_MAX_HEADER = 4096
_MAX_NAME = 256


@dataclass(frozen=True)
class KeyCeremony:
    """What the key holder hands to the orchestrator: nothing secret.

    `public_context` goes to the aggregation server, `key_id` names the key in chunk
    headers, `envelopes[site]` is relayed unchanged to `site`.
    """

    study_id: str
    key_holder: str
    key_id: bytes
    public_context: bytes
    envelopes: Mapping[str, bytes] = field(default_factory=dict)


def _raw_public(key: X25519PublicKey | Ed25519PublicKey | bytes, kind: str) -> bytes:
    if isinstance(key, bytes | bytearray):
        raw = bytes(key)
    elif isinstance(key, X25519PublicKey | Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    else:
        raise HEError(f"{kind} public key must be a key object or 32 raw bytes")
    if len(raw) != 32:
        raise HEError(f"{kind} public key must be 32 bytes, got {len(raw)}")
    return raw


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise HEError(f"{what} must be a non-empty string of at most {_MAX_NAME} characters")
    return value


def _hkdf(shared: bytes, header: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_DOMAIN, info=header).derive(shared)


def seal_secret_context(
    secret: SecretContext,
    *,
    study_id: str,
    sender: str,
    recipient: str,
    recipient_public_key: X25519PublicKey | bytes,
    signing_key: Ed25519PrivateKey,
) -> bytes:
    """Encrypt `secret` to one datasite's X25519 key and sign the envelope (see module doc)."""
    if not isinstance(secret, SecretContext):
        raise HEError("seal_secret_context needs a SecretContext")
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise HEError("signing_key must be an Ed25519PrivateKey")
    recipient_pk = _raw_public(recipient_public_key, "X25519")
    ephemeral = X25519PrivateKey.generate()
    nonce = os.urandom(_NONCE_BYTES)
    header = json.dumps(
        {
            "v": 1,
            "alg": ALG,
            "study_id": _check_name(study_id, "study_id"),
            "sender": _check_name(sender, "sender"),
            "recipient": _check_name(recipient, "recipient"),
            "recipient_pk": recipient_pk.hex(),
            "epk": ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
            "nonce": nonce.hex(),
            "key_id": secret.key_id.hex(),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_pk))
    except ValueError as exc:
        raise HEError(f"unusable recipient X25519 key: {exc}") from exc
    prefix = MAGIC + _LEN.pack(len(header)) + header
    body = prefix + AESGCM(_hkdf(shared, header)).encrypt(nonce, secret.data, prefix)
    return body + signing_key.sign(_DOMAIN + body)


def open_secret_context(
    envelope: bytes,
    *,
    study_id: str,
    sender: str,
    recipient: str,
    recipient_private_key: X25519PrivateKey,
    sender_public_key: Ed25519PublicKey | bytes,
    key_id: bytes | None = None,
) -> SecretContext:
    """Verify and decrypt an envelope addressed to `recipient` by `sender` for `study_id`.

    Checks, in order: framing, the sender's Ed25519 signature, every header field against
    the expected values (and `key_id` when given), then AES-GCM. Any failure is `HEError`.
    """
    if not isinstance(envelope, bytes | bytearray):
        raise HEError("envelope must be bytes")
    envelope = bytes(envelope)
    if not isinstance(recipient_private_key, X25519PrivateKey):
        raise HEError("recipient_private_key must be an X25519PrivateKey")
    head = len(MAGIC) + _LEN.size
    if len(envelope) < head + _SIG_BYTES or envelope[: len(MAGIC)] != MAGIC:
        raise HEError("not a fedsilo HE key envelope")
    (header_len,) = _LEN.unpack_from(envelope, len(MAGIC))
    if header_len > _MAX_HEADER or head + header_len + 16 + _SIG_BYTES > len(envelope):
        raise HEError("malformed key envelope (bad header length)")
    body, signature = envelope[:-_SIG_BYTES], envelope[-_SIG_BYTES:]
    try:
        Ed25519PublicKey.from_public_bytes(_raw_public(sender_public_key, "Ed25519")).verify(
            signature, _DOMAIN + body
        )
    except InvalidSignature as exc:
        raise HEError(f"key envelope signature does not verify for sender {sender!r}") from exc
    header_bytes = body[head : head + header_len]
    try:
        header = json.loads(header_bytes)
        epk = bytes.fromhex(header["epk"])
        nonce = bytes.fromhex(header["nonce"])
        sealed_key_id = bytes.fromhex(header["key_id"])
        sealed_recipient_pk = bytes.fromhex(header["recipient_pk"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HEError("malformed key envelope header") from exc
    own_pk = recipient_private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected = {"v": 1, "alg": ALG, "study_id": study_id, "sender": sender, "recipient": recipient}
    for name, value in expected.items():
        if header.get(name) != value:
            raise HEError(
                f"key envelope is for {name}={header.get(name)!r}, expected {value!r}"
            )
    if sealed_recipient_pk != own_pk:
        raise HEError("key envelope was sealed to another X25519 key")
    if key_id is not None and sealed_key_id != key_id:
        raise HEError("key envelope carries another key id than the study's")
    if len(epk) != 32 or len(nonce) != _NONCE_BYTES:
        raise HEError("malformed key envelope header")
    try:
        shared = recipient_private_key.exchange(X25519PublicKey.from_public_bytes(epk))
        data = AESGCM(_hkdf(shared, header_bytes)).decrypt(
            nonce, body[head + header_len :], body[: head + header_len]
        )
    except (InvalidTag, ValueError) as exc:
        raise HEError("key envelope does not decrypt (tampered or not for this key)") from exc
    secret = SecretContext(data)
    if secret.key_id != sealed_key_id:
        raise HEError("key envelope content does not match its key id")
    return secret


def create_key_ceremony(
    study_id: str,
    key_holder: str,
    signing_key: Ed25519PrivateKey,
    recipients: Mapping[str, X25519PublicKey | bytes],
) -> tuple[KeyCeremony, SecretContext]:
    """Make a fresh key at the key holder and seal it to every other datasite.

    Returns the ceremony (public context, key id, one envelope per recipient; safe to send
    to the orchestrator) and the key holder's own `SecretContext` (keep it at the site).
    """
    _check_name(study_id, "study_id")
    _check_name(key_holder, "key_holder")
    if key_holder in recipients:
        raise HEError("the key holder must not be among the recipients")
    secret = SecretContext.generate()
    envelopes = {
        name: seal_secret_context(
            secret,
            study_id=study_id,
            sender=key_holder,
            recipient=name,
            recipient_public_key=public_key,
            signing_key=signing_key,
        )
        for name, public_key in sorted(recipients.items())
    }
    ceremony = KeyCeremony(
        study_id=study_id,
        key_holder=key_holder,
        key_id=secret.key_id,
        public_context=secret.public_bytes(),
        envelopes=envelopes,
    )
    return ceremony, secret


_STATEMENT_DOMAIN = b"fedsilo/he/recipient-key/v1\x00"


def _statement_body(study_id: str, site: str, kex_key: bytes) -> bytes:
    return _STATEMENT_DOMAIN + json.dumps(
        {"study_id": study_id, "site": site, "kex_key": kex_key.hex()}, sort_keys=True, separators=(",", ":")
    ).encode()


def sign_recipient_key(
    study_id: str, site: str, kex_public_key: X25519PublicKey | bytes, signing_key: Ed25519PrivateKey
) -> dict[str, str]:
    """A datasite's signed statement of the X25519 key the study's key must be sealed to.

    The key holder checks it with `verify_recipient_key` against the site's Ed25519 key
    from its own pinned registry, so the relaying orchestrator cannot slip in a key of its
    own and receive the secret key.
    """
    raw = _raw_public(kex_public_key, "X25519")
    body = _statement_body(_check_name(study_id, "study_id"), _check_name(site, "site"), raw)
    return {
        "study_id": study_id,
        "site": site,
        "kex_key": raw.hex(),
        "signature": signing_key.sign(body).hex(),
    }


def verify_recipient_key(
    statement: Mapping[str, str], *, study_id: str, site: str, signer_public_key: Ed25519PublicKey | bytes
) -> bytes:
    """The raw X25519 key of a `sign_recipient_key` statement, or `HEError` if it is not
    `site`'s statement for `study_id` under `signer_public_key`."""
    try:
        raw = bytes.fromhex(statement["kex_key"])
        signature = bytes.fromhex(statement["signature"])
        claimed = (statement["study_id"], statement["site"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise HEError("malformed recipient key statement") from exc
    if claimed != (study_id, site):
        raise HEError(
            f"the key statement is {claimed[1]!r}'s for {claimed[0]!r}, expected {site!r}'s for {study_id!r}"
        )
    if len(raw) != 32:
        raise HEError("the recipient key must be 32 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(_raw_public(signer_public_key, "Ed25519")).verify(
            signature, _statement_body(study_id, site, raw)
        )
    except InvalidSignature as exc:
        raise HEError(f"{site!r}'s key statement does not verify under its pinned signing key") from exc
    return raw
