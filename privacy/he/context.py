"""CKKS parameters, the `HEError` type and the key-holding `SecretContext` (see `privacy.he`)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import math

import tenseal as ts

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60)  # one 60-bit data prime + one 60-bit special (key) prime
SCALE_BITS = 40
GLOBAL_SCALE = float(2**SCALE_BITS)
SLOTS = POLY_MODULUS_DEGREE // 2  # 4096 values per ciphertext
# Decryption is exact only while |Δ·x| < q/2 for the 60-bit data prime q: |x| < 2^19.
WRAP_BOUND = float(2 ** (COEFF_MOD_BIT_SIZES[0] - 1 - SCALE_BITS))
# Each site's pre-weighted value must satisfy |w·x| <= MAX_ABS_VALUE, and at most
# MAX_CONTRIBUTIONS are summed per chunk, so |sum| <= 2^18 = WRAP_BOUND / 2 even when the
# weights are not normalized (with normalized weights |sum| <= MAX_ABS_VALUE).
MAX_ABS_VALUE = float(2**13)
MAX_CONTRIBUTIONS = 32
# Noise flooding on decryption (see privacy.he): std of the added noise in the coefficient
# domain. 2^6 is 20x the RLWE error std (3.2) of the HE standard; in value units it is
# FLOOD_COEFF_STD·sqrt(N)/Δ ≈ 5.3e-9, about the size of CKKS's own error.
FLOOD_COEFF_STD = float(2**6)
KEY_ID_BYTES = 16

_KEY_ID_LABEL = b"fedsilo/he/key-id/v1\x00"
_PRF_LABEL = b"fedsilo/he/prf/v1\x00"


class HEError(ValueError):
    """Any failure of the `he` aggregation mode: bad input, bad key material, tampering."""


def default_flood_std() -> float:
    """Slot-domain std of the decryption noise flood for the fixed parameters (≈ 5.3e-9)."""
    return FLOOD_COEFF_STD * math.sqrt(POLY_MODULUS_DEGREE) / GLOBAL_SCALE


def _new_tenseal_context() -> ts.Context:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=1,
    )
    ctx.global_scale = GLOBAL_SCALE
    return ctx


def _serialize(ctx: ts.Context, *, secret: bool) -> bytes:
    return ctx.serialize(
        save_public_key=False,
        save_secret_key=secret,
        save_galois_keys=False,
        save_relin_keys=False,
    )


@functools.cache
def public_context_bytes() -> bytes:
    """The orchestrator's context: parameters and scale only, no key of any kind.

    Encryption is symmetric (see `privacy.he`), so there is no public key; this is what
    `serialize(save_secret_key=False)` of any key holder's context returns, byte for byte.
    """
    return _serialize(_new_tenseal_context(), secret=False)


def load_tenseal_context(data: bytes) -> ts.Context:
    """Deserialize a TenSEAL context, mapping every failure to `HEError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HEError(f"a context must be bytes, not {type(data).__name__}")
    try:
        return ts.context_from(bytes(data), n_threads=1)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEError(f"not a TenSEAL context: {exc}") from exc


class SecretContext:
    """A CKKS context holding the secret key: encrypts and decrypts; never leaves a datasite
    except sealed to another participating datasite (`privacy.he.ceremony`).

    `data` is the canonical serialization (secret key and parameters, no relinearization or
    Galois keys); `key_id` = SHA-256(label ‖ data)[:16] names the key in chunk headers.
    """

    __slots__ = ("_prf_key", "context", "data", "key_id")

    def __init__(self, data: bytes) -> None:
        ctx = load_tenseal_context(data)
        if not ctx.is_private():
            raise HEError("this context holds no secret key (a public context cannot decrypt)")
        if _serialize(ctx, secret=False) != public_context_bytes():
            raise HEError(
                "context parameters differ from the fixed CKKS parameters "
                f"(N={POLY_MODULUS_DEGREE}, moduli {list(COEFF_MOD_BIT_SIZES)}, "
                f"scale 2^{SCALE_BITS}, symmetric encryption)"
            )
        self.context: ts.Context = ctx
        self.data: bytes = _serialize(ctx, secret=True)
        self.key_id: bytes = hashlib.sha256(_KEY_ID_LABEL + self.data).digest()[:KEY_ID_BYTES]
        self._prf_key = hashlib.sha256(_PRF_LABEL + self.data).digest()

    @classmethod
    def generate(cls) -> SecretContext:
        """A fresh key (the key holder's first step of the ceremony)."""
        return cls(_serialize(_new_tenseal_context(), secret=True))

    def public_bytes(self) -> bytes:
        """The context without its secret key, for the orchestrator."""
        return _serialize(self.context, secret=False)

    def prf(self, label: bytes) -> bytes:
        """HMAC-SHA256 keyed by the secret key (all key holders get the same value)."""
        return hmac.new(self._prf_key, label, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"SecretContext(key_id={self.key_id.hex()})"
