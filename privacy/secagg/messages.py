"""Wire messages of the protocol: small frozen dataclasses with JSON dict forms.

Binary fields travel as standard base64 strings; field elements (Shamir shares) as
base64 of 32 little-endian bytes. The masked vector is the only non-JSON payload: raw
little-endian uint32 bytes next to a JSON header (`MaskedInput.header()` / `.body()`,
or one framed blob with `to_bytes()`). Parsing never unpickles or evaluates anything and
raises `ProtocolError` on any malformed field.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np

from . import shamir
from .errors import ProtocolError


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ProtocolError(f"{what}: invalid base64") from exc


def _str(d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"field {key!r} must be a non-empty string")
    return value


def _str_list(d: dict[str, Any], key: str) -> tuple[str, ...]:
    value = d.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"field {key!r} must be a list of strings")
    if len(set(value)) != len(value):
        raise ProtocolError(f"field {key!r} lists a site twice")
    return tuple(value)


def _shares(d: dict[str, Any], key: str) -> dict[str, int]:
    value = d.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"field {key!r} must be an object")
    out = {}
    for site, enc in value.items():
        try:
            out[site] = shamir.decode(b64d(enc, f"{key}[{site!r}]"))
        except ValueError as exc:
            raise ProtocolError(f"{key}[{site!r}]: {exc}") from exc
    return out


class _Message:
    TYPE: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Self:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: object) -> Self:
        if not isinstance(d, dict):
            raise ProtocolError(f"{cls.__name__}: expected a JSON object")
        if d.get("type") != cls.TYPE:
            raise ProtocolError(f"expected a {cls.TYPE!r} message, got type {d.get('type')!r}")
        return cls._parse(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"{cls.__name__}: invalid JSON") from exc
        return cls.from_dict(d)


@dataclass(frozen=True)
class KeyAdvert(_Message):
    """Phase 1, site -> server -> all: the site's fresh public keys, signed long-term."""

    TYPE: ClassVar[str] = "secagg/advert"
    round_id: str
    site_id: str
    c_pk: bytes  # X25519, pairwise encryption channel
    s_pk: bytes  # X25519, mask agreement
    signature: bytes  # Ed25519 over (round_id, site_id, c_pk, s_pk)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "round_id": self.round_id,
            "site_id": self.site_id,
            "c_pk": b64e(self.c_pk),
            "s_pk": b64e(self.s_pk),
            "signature": b64e(self.signature),
        }

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Self:
        return cls(
            _str(d, "round_id"),
            _str(d, "site_id"),
            b64d(d.get("c_pk"), "c_pk"),
            b64d(d.get("s_pk"), "s_pk"),
            b64d(d.get("signature"), "signature"),
        )


@dataclass(frozen=True)
class EncryptedShare(_Message):
    """Phase 2, sender -> server -> receiver: AES-GCM(b share || s_sk share), opaque to the server."""

    TYPE: ClassVar[str] = "secagg/share"
    round_id: str
    sender: str
    receiver: str
    ciphertext: bytes  # 12-byte nonce || ciphertext || 16-byte tag

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "round_id": self.round_id,
            "sender": self.sender,
            "receiver": self.receiver,
            "ciphertext": b64e(self.ciphertext),
        }

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Self:
        return cls(
            _str(d, "round_id"),
            _str(d, "sender"),
            _str(d, "receiver"),
            b64d(d.get("ciphertext"), "ciphertext"),
        )


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Phase 3, site -> server: the masked uint32 vector plus a hash commitment to b_i."""

    TYPE: ClassVar[str] = "secagg/masked_input"
    round_id: str
    site_id: str
    vector: np.ndarray = field(repr=False)  # uint32, 1-D
    b_commitment: bytes  # SHA-256 binding round, site and the self-mask seed

    def header(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "round_id": self.round_id,
            "site_id": self.site_id,
            "length": int(self.vector.shape[0]),
            "b_commitment": b64e(self.b_commitment),
        }

    def body(self) -> memoryview:
        """The vector as raw little-endian uint32 bytes (zero-copy on little-endian hosts)."""
        return memoryview(np.ascontiguousarray(self.vector, dtype="<u4")).cast("B")

    @classmethod
    def from_wire(cls, header: object, body: bytes | bytearray | memoryview) -> Self:
        if not isinstance(header, dict) or header.get("type") != cls.TYPE:
            raise ProtocolError(f"expected a {cls.TYPE!r} header")
        length = header.get("length")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ProtocolError("field 'length' must be a non-negative integer")
        if len(body) != 4 * length:
            raise ProtocolError(f"body has {len(body)} bytes, header says {length} uint32 words")
        return cls(
            _str(header, "round_id"),
            _str(header, "site_id"),
            np.frombuffer(body, dtype="<u4"),
            b64d(header.get("b_commitment"), "b_commitment"),
        )

    def to_bytes(self) -> bytes:
        """One blob: u32 big-endian header length, JSON header, raw body."""
        head = json.dumps(self.header(), separators=(",", ":")).encode()
        return b"".join((struct.pack(">I", len(head)), head, self.body()))  # one copy of the body

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> Self:
        view = memoryview(blob)
        if len(view) < 4:
            raise ProtocolError("masked input blob too short")
        (n,) = struct.unpack(">I", view[:4])
        if len(view) < 4 + n:
            raise ProtocolError("masked input blob truncated")
        try:
            header = json.loads(bytes(view[4 : 4 + n]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError("masked input header: invalid JSON") from exc
        return cls.from_wire(header, view[4 + n :])


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Phase 4, server -> survivors: who sent a masked input, and who dropped after sharing."""

    TYPE: ClassVar[str] = "secagg/unmask_request"
    round_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "round_id": self.round_id,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
        }

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Self:
        return cls(_str(d, "round_id"), _str_list(d, "survivors"), _str_list(d, "dropped"))


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Phase 4, survivor -> server: b shares of survivors, s_sk shares of dropped sites."""

    TYPE: ClassVar[str] = "secagg/unmask"
    round_id: str
    site_id: str
    b_shares: dict[str, int]  # owner site -> share of its self-mask seed b
    s_shares: dict[str, int]  # owner site -> share of its mask secret key s_sk

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "round_id": self.round_id,
            "site_id": self.site_id,
            "b_shares": {k: b64e(shamir.encode(v)) for k, v in self.b_shares.items()},
            "s_shares": {k: b64e(shamir.encode(v)) for k, v in self.s_shares.items()},
        }

    @classmethod
    def _parse(cls, d: dict[str, Any]) -> Self:
        return cls(
            _str(d, "round_id"),
            _str(d, "site_id"),
            _shares(d, "b_shares"),
            _shares(d, "s_shares"),
        )
