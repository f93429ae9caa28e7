"""Shamir t-of-n secret sharing over the prime field GF(2^255 - 19) with Python ints.

A secret is the constant term of a random polynomial of degree t-1; a share is the
polynomial's value at a non-zero x-coordinate (in the protocol: the holder's 1-based
index in the sorted site list). Any t shares determine the secret by Lagrange
interpolation at 0; any t-1 shares are consistent with every secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

PRIME = 2**255 - 19
SHARE_BYTES = 32


def random_element() -> int:
    """A uniformly random field element (CSPRNG)."""
    return secrets.randbelow(PRIME)


def split(secret: int, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Share `secret` so that any `threshold` of the shares at `xs` reconstruct it."""
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be a field element in [0, PRIME)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and {len(xs)}")
    points = [x % PRIME for x in xs]
    if 0 in points or len(set(points)) != len(points):
        raise ValueError("x-coordinates must be distinct and non-zero mod PRIME")
    coeffs = [secret] + [random_element() for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


def lagrange_eval(points: Mapping[int, int] | Iterable[tuple[int, int]], x: int = 0) -> int:
    """Value at `x` of the unique polynomial of degree < len(points) through `points`."""
    pts = list(points.items()) if isinstance(points, Mapping) else list(points)
    xs = [px % PRIME for px, _ in pts]
    if not pts or len(set(xs)) != len(xs):
        raise ValueError("need at least one point, with distinct x-coordinates")
    total = 0
    for i, (xi, yi) in enumerate(pts):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Mapping[int, int], threshold: int) -> int:
    """Reconstruct the secret from `threshold` of `shares` (x -> y); extra shares are ignored."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares given, {threshold} needed")
    chosen = sorted(shares.items())[:threshold]
    return lagrange_eval(chosen, 0)


def encode(value: int) -> bytes:
    """Field element -> 32 bytes, little-endian."""
    return value.to_bytes(SHARE_BYTES, "little")


def decode(data: bytes) -> int:
    """32 little-endian bytes -> field element (rejects non-canonical values)."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a field element is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= PRIME:
        raise ValueError("value is not a canonical field element")
    return value
