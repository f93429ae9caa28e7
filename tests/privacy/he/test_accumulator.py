"""The orchestrator's `CiphertextAccumulator`: what it refuses and how a round resumes."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tenseal as ts

from privacy import he
from privacy.he.frame import pack_frame
from tests.privacy.he.federation import CV, SITES, Federation, site_frames

# ---------------------------------------------------------------- accumulator refusals


def _accumulator(fed: Federation, n: int = 3 * CV - 5, **kwargs) -> he.CiphertextAccumulator:
    return he.CiphertextAccumulator(
        fed.ceremony.public_context, n, key_id=fed.ceremony.key_id, chunk_values=CV, **kwargs
    )


def test_accumulator_holds_only_the_public_context(fed: Federation) -> None:
    with pytest.raises(he.HEError, match="only the public context"):
        he.CiphertextAccumulator(fed.secrets["alpha"].data, 10, key_id=fed.ceremony.key_id)
    with pytest.raises(he.HEError, match="key_id"):
        he.CiphertextAccumulator(fed.ceremony.public_context, 10, key_id=b"short")
    with pytest.raises(he.HEError, match="chunk_values"):
        he.CiphertextAccumulator(
            fed.ceremony.public_context, 10, key_id=fed.ceremony.key_id, chunk_values=1000
        )
    with pytest.raises(he.HEError, match="max_contributions"):
        _accumulator(fed, max_contributions=64)


def test_accumulator_rejects_duplicates_and_wrong_index(fed: Federation) -> None:
    acc = _accumulator(fed)
    frames = site_frames(fed, "alpha")
    acc.add("alpha", 0, frames[0])
    with pytest.raises(he.HEError, match="duplicate chunk 0"):
        acc.add("alpha", 0, frames[0])
    with pytest.raises(he.HEError, match="duplicate chunk 0"):  # a fresh encryption too
        acc.add("alpha", 0, site_frames(fed, "alpha", seed=1)[0])
    with pytest.raises(he.HEError, match="header says index 1, expected 2"):
        acc.add("alpha", 2, frames[1])
    acc.add("beta", 0, frames[0])  # another site may send the same index
    assert acc.missing_chunks("alpha") == [1, 2] and acc.sites == {"alpha", "beta"}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: b"",
        lambda f: b"garbage" * 20,
        lambda f: b"XXXX" + f[4:],  # magic
        lambda f: f[:4] + b"\x09" + f[5:],  # version
        lambda f: f[:-1],  # truncated
        lambda f: f + b"\x00",  # trailing bytes
        lambda f: f[:60] + bytes(200) + f[260:],  # ciphertext bytes zeroed: unparsable
        lambda f: f[:40] + struct.pack("<I", 100) + f[44:],  # header count != layout
        lambda f: f[:24] + struct.pack("<Q", 12345) + f[32:],  # total of another vector
        lambda f: f[:5] + b"\x02" + struct.pack("<H", 1) + f[8:],  # claims to be an aggregate
    ],
)
def test_accumulator_rejects_malformed_chunks(fed: Federation, mutate) -> None:
    acc = _accumulator(fed)
    good = site_frames(fed, "alpha")[0]
    with pytest.raises(he.HEError):
        acc.add("alpha", 0, mutate(good))
    acc.add("alpha", 0, good)  # a refused chunk changed nothing


def test_accumulator_rejects_chunks_under_another_context(fed: Federation) -> None:
    acc = _accumulator(fed)
    outsider = he.SecretContext.generate()  # same parameters, another key
    vec = np.ones(3 * CV - 5)
    foreign = next(he.encrypt_stream(outsider, vec, weight=0.5, chunk_values=CV))
    with pytest.raises(he.HEError, match="not this study's key"):
        acc.add("alpha", 0, foreign)
    # a ciphertext made under other CKKS parameters, with a forged header: SEAL refuses it
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    other.global_scale = 2**40
    header = he.read_chunk_header(site_frames(fed, "alpha")[0])
    parts = [ts.ckks_vector(other, [0.5] * he.SLOTS).serialize() for _ in range(2)]
    with pytest.raises(he.HEError, match="does not load"):
        acc.add("alpha", 0, pack_frame(header, parts))
    # a real ciphertext of the right key but holding fewer values than the header says
    short = ts.ckks_vector(fed.secrets["alpha"].context, [0.5] * 10).serialize()
    with pytest.raises(he.HEError, match="holds 10 values"):
        acc.add("alpha", 0, pack_frame(header, [short, short]))


def test_accumulator_contribution_cap(fed: Federation) -> None:
    acc = _accumulator(fed, max_contributions=2)
    first = [site_frames(fed, s)[0] for s in SITES]
    acc.add("alpha", 0, first[0])
    acc.add("beta", 0, first[1])
    with pytest.raises(he.HEError, match="already has 2 contributions"):
        acc.add("gamma", 0, first[2])


def test_export_needs_every_chunk_of_every_site_and_resume_works(fed: Federation) -> None:
    n = 3 * CV - 5
    acc = _accumulator(fed, n)
    with pytest.raises(he.HEError, match="nothing to export"):
        acc.export()
    vecs = {s: np.random.default_rng(i).normal(size=n) for i, s in enumerate(SITES)}
    for site in SITES:
        upload = he.encrypt_stream(fed.secrets[site], vecs[site], weight=1 / 3, chunk_values=CV)
        for index, frame in enumerate(upload):
            if site == "gamma" and index == 1:
                break  # gamma's upload is interrupted after chunk 0
            acc.add(site, index, frame)
    with pytest.raises(he.HEError, match="'gamma': 2"):
        acc.export()
    missing = acc.missing_chunks("gamma")
    assert missing == [1, 2]
    resumed = he.encrypt_stream(
        fed.secrets["gamma"], vecs["gamma"], weight=1 / 3, chunk_values=CV, chunk_indices=missing
    )
    for index, frame in zip(missing, resumed, strict=True):
        acc.add("gamma", index, frame)
    frames = list(acc.export())
    got = he.decrypt_stream(fed.secrets["beta"], frames, n, flood_std=0.0)
    assert np.max(np.abs(got - sum(vecs.values()) / 3)) < 1e-8
    with pytest.raises(he.HEError, match="already exported"):
        acc.add("delta", 0, site_frames(fed, "alpha")[0])
