"""Decryption of aggregate frames at a key-holding datasite, with noise flooding.

See "Decryption leaks" in `privacy.he` for why `decrypt_stream` adds noise and how much.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .context import HEError, SecretContext, default_flood_std
from .frame import KIND_AGGREGATE, MAX_TOTAL_VALUES, load_part, n_chunks, part_sizes, unpack_frame

_FLOOD_LABEL = b"fedsilo/he/flood/v1\x00"


def _gaussian(key: bytes, n: int) -> np.ndarray:
    """n standard normal values from AES-256-CTR(key) via Box-Muller (deterministic in key)."""
    pairs = (n + 1) // 2
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16 * pairs))
    u = ((np.frombuffer(stream, dtype="<u8") >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u[0::2]))
    angle = 2.0 * np.pi * u[1::2]
    out = np.empty(2 * pairs)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    return out[:n]


def decrypt_stream(
    secret_ctx: SecretContext | bytes,
    chunks: Iterable[bytes],
    total: int,
    *,
    flood_std: float | None = None,
    min_contributors: int = 2,
) -> np.ndarray:
    """Decrypt aggregate chunks (any order, each exactly once) into a float64 vector.

    Refuses single-site contributions and aggregates of fewer than `min_contributors`
    sites as reported by the header (a guard against mistakes; the orchestrator writes
    the header). Adds Gaussian noise of std `flood_std` (default `default_flood_std()`,
    ≈ 5.3e-9; 0 disables) before returning: see "Decryption leaks" in `privacy.he`. The
    noise is derived from the secret key and the frame, so decrypting the same aggregate
    again gives the same result; still, decrypt one aggregate per round only.
    """
    secret = secret_ctx if isinstance(secret_ctx, SecretContext) else SecretContext(secret_ctx)
    if not isinstance(total, int) or not 1 <= total <= MAX_TOTAL_VALUES:
        raise HEError(f"total must be an int in [1, 2^40], got {total!r}")
    sigma = default_flood_std() if flood_std is None else float(flood_std)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise HEError("flood_std must be a finite number >= 0")
    if not isinstance(min_contributors, int) or min_contributors < 1:
        raise HEError("min_contributors must be an int >= 1")
    out = np.empty(total, dtype=np.float64)
    seen: set[int] = set()
    layout: tuple[int, int] | None = None
    for frame in chunks:
        header, parts = unpack_frame(frame)
        if header.kind != KIND_AGGREGATE:
            raise HEError("refusing to decrypt a single site's contribution; only aggregates")
        if header.key_id != secret.key_id:
            raise HEError(
                f"chunk was encrypted under key {header.key_id.hex()}, "
                f"not this context's key {secret.key_id.hex()}"
            )
        if header.total_values != total:
            raise HEError(f"chunk is for {header.total_values} values, expected {total}")
        if header.contributors < min_contributors:
            raise HEError(
                f"aggregate of {header.contributors} site(s), fewer than {min_contributors}"
            )
        if layout is None:
            layout = (header.chunk_values, header.contributors)
        elif layout != (header.chunk_values, header.contributors):
            raise HEError("chunks disagree on chunk size or number of contributors")
        if header.chunk_index in seen:
            raise HEError(f"duplicate aggregate chunk {header.chunk_index}")
        values = np.concatenate(
            [
                np.asarray(load_part(secret.context, blob, size).decrypt(), dtype=np.float64)
                for blob, size in zip(parts, part_sizes(header.count), strict=True)
            ]
        )
        if sigma > 0:
            key = secret.prf(_FLOOD_LABEL + hashlib.sha256(frame).digest())
            values += sigma * _gaussian(key, values.size)
        out[header.offset : header.offset + header.count] = values
        seen.add(header.chunk_index)
    expected = n_chunks(total, layout[0]) if layout else None
    if expected is None or len(seen) != expected:
        missing = "all" if expected is None else expected - len(seen)
        raise HEError(f"aggregate incomplete: {missing} chunk(s) missing")
    return out
