"""A three-site `he` federation (alpha holds the key) and helpers for the `he` tests."""

from __future__ import annotations

import dataclasses

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy import he

STUDY = "study-42"
SITES = ("alpha", "beta", "gamma")  # alpha holds the key
CV = 2 * he.SLOTS  # small chunks so that small vectors cross chunk boundaries


@dataclasses.dataclass
class Federation:
    ceremony: he.KeyCeremony
    secrets: dict[str, he.SecretContext]
    signing: dict[str, Ed25519PrivateKey]
    agreement: dict[str, X25519PrivateKey]


def make_federation() -> Federation:
    """A fresh key ceremony: alpha makes the key, beta and gamma open their envelopes."""
    signing = {s: Ed25519PrivateKey.generate() for s in SITES}
    agreement = {s: X25519PrivateKey.generate() for s in SITES}
    ceremony, own = he.create_key_ceremony(
        STUDY, "alpha", signing["alpha"], {s: agreement[s].public_key() for s in SITES[1:]}
    )
    secrets = {"alpha": own}
    for site in SITES[1:]:
        secrets[site] = he.open_secret_context(
            ceremony.envelopes[site],
            study_id=STUDY,
            sender="alpha",
            recipient=site,
            recipient_private_key=agreement[site],
            sender_public_key=signing["alpha"].public_key(),
            key_id=ceremony.key_id,
        )
    return Federation(ceremony, secrets, signing, agreement)


def weighted_updates(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    raw_weights = np.array([120.0, 300.0, 80.0])  # e.g. episode counts
    return [rng.normal(scale=2.0, size=n) for _ in SITES], raw_weights / raw_weights.sum()


def he_aggregate(fed: Federation, vectors, weights, cv: int = CV) -> list[bytes]:
    n = vectors[0].size
    acc = he.CiphertextAccumulator(
        fed.ceremony.public_context, n, key_id=fed.ceremony.key_id, chunk_values=cv
    )
    for site, vec, w in zip(SITES, vectors, weights, strict=True):
        for index, frame in enumerate(he.encrypt_stream(fed.secrets[site], vec, weight=w, chunk_values=cv)):
            acc.add(site, index, frame)
    return list(acc.export())


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def site_frames(fed: Federation, site: str, n: int = 3 * CV - 5, seed: int = 0) -> list[bytes]:
    vec = np.random.default_rng(seed).normal(size=n)
    return list(he.encrypt_stream(fed.secrets[site], vec, weight=1 / 3, chunk_values=CV))
