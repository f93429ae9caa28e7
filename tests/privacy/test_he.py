"""The `he` aggregation mode: CKKS sums, key ceremony, chunk framing and refusals."""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privacy import he
from privacy.he import stream

STUDY = "study-42"
SITES = ("alpha", "beta", "gamma")  # alpha holds the key
CV = 2 * he.SLOTS  # small chunks so that small vectors cross chunk boundaries


@dataclasses.dataclass
class Federation:
    ceremony: he.KeyCeremony
    secrets: dict[str, he.SecretContext]
    signing: dict[str, Ed25519PrivateKey]
    agreement: dict[str, X25519PrivateKey]


@pytest.fixture(scope="module")
def fed() -> Federation:
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


def _updates(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    raw_weights = np.array([120.0, 300.0, 80.0])  # e.g. episode counts
    return [rng.normal(scale=2.0, size=n) for _ in SITES], raw_weights / raw_weights.sum()


def _aggregate(fed: Federation, vectors, weights, cv: int = CV) -> list[bytes]:
    n = vectors[0].size
    acc = he.CiphertextAccumulator(
        fed.ceremony.public_context, n, key_id=fed.ceremony.key_id, chunk_values=cv
    )
    for site, vec, w in zip(SITES, vectors, weights, strict=True):
        for index, frame in enumerate(he.encrypt_stream(fed.secrets[site], vec, weight=w, chunk_values=cv)):
            acc.add(site, index, frame)
    return list(acc.export())


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ---------------------------------------------------------------- parameters, contexts


def test_parameters_and_public_context(fed: Federation) -> None:
    assert (he.POLY_MODULUS_DEGREE, he.COEFF_MOD_BIT_SIZES, he.SLOTS) == (8192, (60, 60), 4096)
    assert he.GLOBAL_SCALE == 2.0**40 and he.WRAP_BOUND == 2.0**19
    assert he.MAX_CONTRIBUTIONS * he.MAX_ABS_VALUE <= he.WRAP_BOUND / 2
    assert he.default_flood_std() == pytest.approx(2**6 * math.sqrt(8192) / 2**40)
    public = fed.ceremony.public_context
    assert public == he.public_context_bytes() == fed.secrets["beta"].public_bytes()
    ctx = ts.context_from(public)
    assert ctx.is_public() and not ctx.is_private()
    assert len(public) < 200 < len(fed.secrets["alpha"].data)


def test_public_context_cannot_decrypt(fed: Federation) -> None:
    secret = fed.secrets["beta"]
    ciphertext = ts.ckks_vector(secret.context, [1.5, -2.0, 3.25]).serialize()
    public = ts.context_from(fed.ceremony.public_context)
    loaded = ts.ckks_vector_from(public, ciphertext)  # the orchestrator can load and add ...
    loaded.add_(ts.ckks_vector_from(public, ciphertext))
    with pytest.raises(ValueError, match="secret"):  # ... but not decrypt
        loaded.decrypt()
    with pytest.raises(ValueError):
        ts.ckks_vector(public, [1.0])  # nor encrypt: there is no public key at all
    # the same holds through the library
    with pytest.raises(he.HEError, match="no secret key"):
        he.SecretContext(fed.ceremony.public_context)
    frames = _aggregate(fed, *_updates(10))
    with pytest.raises(he.HEError, match="no secret key"):
        he.decrypt_stream(fed.ceremony.public_context, frames, 10)
    # and the decryption with the real key still works
    assert np.allclose(np.asarray(loaded.decrypt(secret.context.secret_key())), [3.0, -4.0, 6.5])


def test_secret_context_rejects_other_parameters() -> None:
    other = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    other.global_scale = 2**40
    with pytest.raises(he.HEError, match="parameters differ"):
        he.SecretContext(other.serialize(save_secret_key=True))
    with pytest.raises(he.HEError, match="not a TenSEAL context"):
        he.SecretContext(b"\x00garbage")


# ---------------------------------------------------------------- sums and chunking


@pytest.mark.parametrize(
    "n",
    [1, 7, he.SLOTS - 1, he.SLOTS, CV, CV + 1, 3 * CV, 3 * CV - 5, 20_011],
)
def test_he_sum_matches_plain_sum(fed: Federation, n: int) -> None:
    vectors, weights = _updates(n, seed=n)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    frames = _aggregate(fed, vectors, weights)
    assert len(frames) == he.n_chunks(n, CV) == math.ceil(n / CV)
    headers = [he.read_chunk_header(f) for f in frames]
    assert [h.chunk_index for h in headers] == list(range(len(frames)))
    assert sum(h.count for h in headers) == n
    assert all(h.contributors == 3 and h.key_id == fed.ceremony.key_id for h in headers)
    assert all(h.count == CV for h in headers[:-1]) and 1 <= headers[-1].count <= CV

    exact = he.decrypt_stream(fed.secrets["gamma"], frames, n, flood_std=0.0)
    assert np.max(np.abs(exact - want)) < 1e-8
    flooded = he.decrypt_stream(fed.secrets["beta"], reversed(frames), n)  # any order
    assert _rel_err(flooded, want) < 1e-6


def test_weighted_average_of_identical_updates_is_the_update(fed: Federation) -> None:
    update = np.linspace(-3.0, 3.0, 5000)
    weights = np.array([0.2, 0.5, 0.3])
    frames = _aggregate(fed, [update] * 3, weights)
    got = he.decrypt_stream(fed.secrets["alpha"], frames, update.size, flood_std=0.0)
    assert np.max(np.abs(got - update)) < 1e-8


def test_ciphertext_size_is_about_16_bytes_per_value_seeded_32_otherwise(fed: Federation) -> None:
    n = 4 * CV
    layout = {"key_id": fed.ceremony.key_id, "total_values": n, "chunk_values": CV}
    sizes = {}
    for seeded in (True, False):
        frames = list(
            he.encrypt_stream(fed.secrets["alpha"], np.ones(n), weight=0.5, chunk_values=CV, seeded=seeded)
        )
        sizes[seeded] = sum(map(len, frames)) / n
        for index, frame in enumerate(frames):
            he.check_contribution(frame, chunk_index=index, **layout)
    assert 16.0 <= sizes[True] < 16.1  # c0 and the 64-byte seed of c1
    assert 32.0 <= sizes[False] < 32.1
    # sums of seeded ciphertexts are full-size ciphertexts
    aggregate = _aggregate(fed, [np.ones(n)] * 3, [0.5, 0.25, 0.25])
    assert 32.0 <= sum(map(len, aggregate)) / n < 32.1


def test_seeded_part_is_what_tenseal_serialize_writes_for_the_same_ciphertext(fed: Federation) -> None:
    """`_ckks_vector_blob` reproduces TenSEAL's CKKSVectorProto byte for byte."""
    tctx = fed.secrets["alpha"].context.data
    buffer = stream._SaveBuffer()
    try:
        for n in (1, 77, he.SLOTS):
            vec = stream._CKKSVector(tctx, np.linspace(-1, 1, n).tolist())
            seal_bytes = buffer.save(vec.ciphertext()[0])
            assert stream._ckks_vector_blob(n, seal_bytes) == vec.serialize()
    finally:
        buffer.close()


def test_seeded_and_full_size_contributions_sum_together(fed: Federation) -> None:
    n = 2 * CV + 123
    vectors, weights = _updates(n, seed=3)
    acc = he.CiphertextAccumulator(
        fed.ceremony.public_context, n, key_id=fed.ceremony.key_id, chunk_values=CV
    )
    for site, vec, w, seeded in zip(SITES, vectors, weights, (True, False, True), strict=True):
        frames = he.encrypt_stream(fed.secrets[site], vec, weight=w, chunk_values=CV, seeded=seeded)
        for index, frame in enumerate(frames):
            acc.add(site, index, frame)
    got = he.decrypt_stream(fed.secrets["beta"], acc.export(), n, flood_std=0.0)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    assert np.max(np.abs(got - want)) < 1e-8


def test_flooding_noise_is_deterministic_and_of_the_documented_size(fed: Federation) -> None:
    n = 20_000
    vectors, weights = _updates(n, seed=7)
    frames = _aggregate(fed, vectors, weights)
    exact = he.decrypt_stream(fed.secrets["alpha"], frames, n, flood_std=0.0)
    a = he.decrypt_stream(fed.secrets["beta"], frames, n)
    b = he.decrypt_stream(fed.secrets["gamma"], frames, n)
    assert np.array_equal(a, b)  # same aggregate, same key: same noise at every key holder
    noise = a - exact
    assert abs(noise.mean()) < 5 * he.default_flood_std() / math.sqrt(n)
    assert noise.std() == pytest.approx(he.default_flood_std(), rel=0.05)
    bigger = he.decrypt_stream(fed.secrets["alpha"], frames, n, flood_std=1e-3)
    assert (bigger - exact).std() == pytest.approx(1e-3, rel=0.05)


# ---------------------------------------------------------------- key ceremony


def test_key_ceremony_round_trip(fed: Federation) -> None:
    keys = {s.key_id for s in fed.secrets.values()}
    assert keys == {fed.ceremony.key_id}
    assert len({s.data for s in fed.secrets.values()}) == 1
    assert set(fed.ceremony.envelopes) == {"beta", "gamma"}
    assert fed.secrets["alpha"].data not in b"".join(fed.ceremony.envelopes.values())
    assert "key_id=" in repr(fed.secrets["beta"]) and len(repr(fed.secrets["beta"])) < 80
    n = 3000
    vectors, weights = _updates(n, seed=3)
    frames = _aggregate(fed, vectors, weights)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    for site in SITES:  # every key holder can decrypt the aggregate
        got = he.decrypt_stream(fed.secrets[site], frames, n, flood_std=0.0)
        assert np.max(np.abs(got - want)) < 1e-8


def _open(fed: Federation, envelope: bytes, **overrides) -> he.SecretContext:
    kwargs = dict(
        study_id=STUDY,
        sender="alpha",
        recipient="beta",
        recipient_private_key=fed.agreement["beta"],
        sender_public_key=fed.signing["alpha"].public_key(),
    )
    kwargs.update(overrides)
    return he.open_secret_context(envelope, **kwargs)


def test_envelope_accepts_raw_public_key_bytes(fed: Federation) -> None:
    raw = fed.signing["alpha"].public_key().public_bytes_raw()
    assert _open(fed, fed.ceremony.envelopes["beta"], sender_public_key=raw).key_id == (
        fed.ceremony.key_id
    )


@pytest.mark.parametrize("where", ["magic", "header", "ciphertext", "signature", "truncate"])
def test_tampered_envelope_is_rejected(fed: Federation, where: str) -> None:
    env = bytearray(fed.ceremony.envelopes["beta"])
    header_len = struct.unpack_from("<I", env, 8)[0]
    position = {
        "magic": 0,
        "header": 12 + header_len // 2,
        "ciphertext": 12 + header_len + 1000,
        "signature": len(env) - 10,
    }
    if where == "truncate":
        env = env[:-1]
    else:
        env[position[where]] ^= 0x01
    with pytest.raises(he.HEError):
        _open(fed, bytes(env))


def test_envelope_for_another_recipient_is_rejected(fed: Federation) -> None:
    for_beta = fed.ceremony.envelopes["beta"]
    with pytest.raises(he.HEError, match="recipient='beta'"):
        _open(fed, for_beta, recipient="gamma", recipient_private_key=fed.agreement["gamma"])
    with pytest.raises(he.HEError, match="another X25519 key"):  # right name, wrong key
        _open(fed, for_beta, recipient_private_key=fed.agreement["gamma"])
    with pytest.raises(he.HEError, match="study_id"):
        _open(fed, for_beta, study_id="another-study")
    with pytest.raises(he.HEError):  # claimed sender must match the signature key and header
        _open(fed, for_beta, sender="gamma", sender_public_key=fed.signing["gamma"].public_key())
    with pytest.raises(he.HEError, match="key id"):
        _open(fed, for_beta, key_id=b"\x00" * he.KEY_ID_BYTES)


def test_forged_envelope_is_rejected(fed: Federation) -> None:
    """The relaying orchestrator substitutes its own key, signed with its own Ed25519 key."""
    mallory = Ed25519PrivateKey.generate()
    forged = he.seal_secret_context(
        he.SecretContext.generate(),
        study_id=STUDY,
        sender="alpha",
        recipient="beta",
        recipient_public_key=fed.agreement["beta"].public_key(),
        signing_key=mallory,
    )
    with pytest.raises(he.HEError, match="signature"):
        _open(fed, forged)
    # re-signing the genuine envelope's body does not help either
    body = fed.ceremony.envelopes["beta"][:-64]
    resigned = body + mallory.sign(b"fedsilo/he/envelope/v1\x00" + body)
    with pytest.raises(he.HEError, match="signature"):
        _open(fed, resigned)
    # only the genuine envelope opens
    assert _open(fed, fed.ceremony.envelopes["beta"]).key_id == fed.ceremony.key_id


def test_key_ceremony_input_checks(fed: Federation) -> None:
    with pytest.raises(he.HEError, match="key holder"):
        he.create_key_ceremony(
            STUDY, "alpha", fed.signing["alpha"], {"alpha": fed.agreement["alpha"].public_key()}
        )
    with pytest.raises(he.HEError, match="32 bytes"):
        he.create_key_ceremony(STUDY, "alpha", fed.signing["alpha"], {"beta": b"short"})
    with pytest.raises(he.HEError, match="study_id"):
        he.create_key_ceremony("", "alpha", fed.signing["alpha"], {})


# ---------------------------------------------------------------- accumulator refusals


def _frames(fed: Federation, site: str, n: int = 3 * CV - 5, seed: int = 0) -> list[bytes]:
    vec = np.random.default_rng(seed).normal(size=n)
    return list(he.encrypt_stream(fed.secrets[site], vec, weight=1 / 3, chunk_values=CV))


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
    frames = _frames(fed, "alpha")
    acc.add("alpha", 0, frames[0])
    with pytest.raises(he.HEError, match="duplicate chunk 0"):
        acc.add("alpha", 0, frames[0])
    with pytest.raises(he.HEError, match="duplicate chunk 0"):  # a fresh encryption too
        acc.add("alpha", 0, _frames(fed, "alpha", seed=1)[0])
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
    good = _frames(fed, "alpha")[0]
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
    header = he.read_chunk_header(_frames(fed, "alpha")[0])
    parts = [ts.ckks_vector(other, [0.5] * he.SLOTS).serialize() for _ in range(2)]
    with pytest.raises(he.HEError, match="does not load"):
        acc.add("alpha", 0, stream._pack(header, parts))
    # a real ciphertext of the right key but holding fewer values than the header says
    short = ts.ckks_vector(fed.secrets["alpha"].context, [0.5] * 10).serialize()
    with pytest.raises(he.HEError, match="holds 10 values"):
        acc.add("alpha", 0, stream._pack(header, [short, short]))


def test_accumulator_contribution_cap(fed: Federation) -> None:
    acc = _accumulator(fed, max_contributions=2)
    first = [_frames(fed, s)[0] for s in SITES]
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
        acc.add("delta", 0, _frames(fed, "alpha")[0])


# ---------------------------------------------------------------- site-side refusals


@pytest.mark.parametrize(
    ("vector", "weight", "match"),
    [
        (np.array([1.0, np.nan, 2.0]), 0.5, "non-finite value at index 1"),
        (np.array([1.0, 2.0, np.inf]), 0.5, "non-finite value at index 2"),
        (np.array([0.0, 3e4]), 0.5, "exceeds the safe bound"),
        (np.array([0.0, -2e4]), 1.0, "exceeds the safe bound"),
        (np.ones(3), 0.0, "weight"),
        (np.ones(3), 1.5, "weight"),
        (np.ones(3), float("nan"), "weight"),
        (np.ones((2, 2)), 0.5, "1-D"),
        (np.array([]), 0.5, "1-D"),
        (np.array(["a", "b"]), 0.5, "1-D"),
    ],
)
def test_encrypt_stream_refuses_bad_input_eagerly(fed, vector, weight, match) -> None:
    with pytest.raises(he.HEError, match=match):
        he.encrypt_stream(fed.secrets["alpha"], vector, weight=weight)  # no iteration needed


def test_encrypt_stream_checks_the_late_chunks_before_yielding(fed: Federation) -> None:
    vec = np.zeros(3 * CV)
    vec[-1] = 1e9  # only the last chunk is out of range
    with pytest.raises(he.HEError, match=f"index {3 * CV - 1}"):
        he.encrypt_stream(fed.secrets["alpha"], vec, weight=1.0, chunk_values=CV)
    with pytest.raises(he.HEError, match="chunk_values"):
        he.encrypt_stream(fed.secrets["alpha"], vec, weight=1.0, chunk_values=CV + 1)
    with pytest.raises(he.HEError, match="chunk_indices"):
        he.encrypt_stream(fed.secrets["alpha"], vec[:10], weight=1.0, chunk_indices=[1])
    with pytest.raises(he.HEError, match="SecretContext"):
        he.encrypt_stream(fed.ceremony.public_context, vec[:10], weight=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seeded", [True, False])
def test_worker_processes_give_the_same_frames_in_order(fed: Federation, seeded: bool) -> None:
    n = 5 * CV - 9
    vectors, weights = _updates(n, seed=21)
    layout = {"key_id": fed.ceremony.key_id, "total_values": n, "chunk_values": CV}
    frames = {
        site: list(
            he.encrypt_stream(
                fed.secrets[site], v, weight=w, chunk_values=CV, workers=2, seeded=seeded
            )
        )
        for site, v, w in zip(SITES, vectors, weights, strict=True)
    }
    for site in SITES:
        assert [he.read_chunk_header(f).chunk_index for f in frames[site]] == list(range(5))
        for index, frame in enumerate(frames[site]):
            he.check_contribution(frame, chunk_index=index, **layout)
    sequential = list(
        he.encrypt_stream(fed.secrets["alpha"], vectors[0], weight=weights[0], chunk_values=CV, seeded=seeded)
    )
    assert list(map(len, sequential)) == list(map(len, frames["alpha"]))
    aggregate = [
        he.sum_contributions([frames[s][i] for s in SITES], chunk_index=i, **layout) for i in range(5)
    ]
    got = he.decrypt_stream(fed.secrets["gamma"], aggregate, n, flood_std=0.0)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    assert np.max(np.abs(got - want)) < 1e-8

    # a subset of chunks (resume) keeps its order too; stopping early shuts the pool down
    beta = {"weight": weights[1], "chunk_values": CV}
    resumed = he.encrypt_stream(fed.secrets["beta"], vectors[1], chunk_indices=[4, 1, 3], workers=3, **beta)
    assert [he.read_chunk_header(f).chunk_index for f in resumed] == [1, 3, 4]
    partial = he.encrypt_stream(fed.secrets["beta"], vectors[1], workers=2, **beta)
    assert he.read_chunk_header(next(partial)).chunk_index == 0
    partial.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_encryption_rechecks_what_it_encrypts(fed: Federation, workers: int) -> None:
    vec = np.zeros(3 * CV)
    frames = he.encrypt_stream(fed.secrets["alpha"], vec, weight=1.0, chunk_values=CV, workers=workers)
    vec[2 * CV + 5] = 1e9  # changed by the caller after the eager check
    with pytest.raises(he.HEError, match=f"index {2 * CV + 5} exceeds the safe bound"):
        list(frames)


def test_daemonic_processes_encrypt_in_process(fed: Federation, monkeypatch) -> None:
    class Daemon:
        daemon = True

    def no_pool(*args, **kwargs):
        raise AssertionError("a daemonic process must not start a pool")

    monkeypatch.setattr(stream.multiprocessing, "current_process", Daemon)
    monkeypatch.setattr(stream, "_encrypt_chunks_in_pool", no_pool)
    frames = list(
        he.encrypt_stream(fed.secrets["alpha"], np.ones(3 * CV), weight=0.5, chunk_values=CV, workers=4)
    )
    assert [he.read_chunk_header(f).chunk_index for f in frames] == [0, 1, 2]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_encrypt_stream_refuses_bad_worker_counts(fed: Federation, workers) -> None:
    with pytest.raises(he.HEError, match="workers"):
        he.encrypt_stream(fed.secrets["alpha"], np.ones(3), weight=0.5, workers=workers)


def test_decrypt_stream_refusals(fed: Federation) -> None:
    n = 3 * CV - 5
    vectors, weights = _updates(n)
    frames = _aggregate(fed, vectors, weights)
    secret = fed.secrets["beta"]
    with pytest.raises(he.HEError, match="single site's contribution"):
        he.decrypt_stream(secret, _frames(fed, "alpha"), n)
    with pytest.raises(he.HEError, match="fewer than 4"):
        he.decrypt_stream(secret, frames, n, min_contributors=4)
    with pytest.raises(he.HEError, match="1 chunk"):
        he.decrypt_stream(secret, frames[:-1], n)
    with pytest.raises(he.HEError, match="all chunk"):
        he.decrypt_stream(secret, [], n)
    with pytest.raises(he.HEError, match="duplicate aggregate chunk 0"):
        he.decrypt_stream(secret, [frames[0], frames[0], *frames[1:]], n)
    with pytest.raises(he.HEError, match="expected 17"):
        he.decrypt_stream(secret, frames, 17)
    with pytest.raises(he.HEError, match="flood_std"):
        he.decrypt_stream(secret, frames, n, flood_std=-1.0)
    with pytest.raises(he.HEError, match="not this context's key"):
        he.decrypt_stream(he.SecretContext.generate(), frames, n)
    single = he.CiphertextAccumulator(
        fed.ceremony.public_context, n, key_id=fed.ceremony.key_id, chunk_values=CV
    )
    for index, frame in enumerate(_frames(fed, "alpha", n)):
        single.add("alpha", index, frame)
    lone = list(single.export())
    with pytest.raises(he.HEError, match="1 site"):
        he.decrypt_stream(secret, lone, n)  # an "aggregate" of one site is one site's update
    assert he.decrypt_stream(secret, lone, n, min_contributors=1).shape == (n,)


# ---------------------------------------------------------------- memory (slow)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_streaming_memory_is_one_model_not_n(fed: Federation) -> None:
    """1e6 values from 4 sites: the server keeps ~32 MB of running sums, not 4 x 32 MB."""
    n, sites = 1_000_000, ("alpha", "beta", "gamma", "delta")
    rng = np.random.default_rng(11)
    vectors = [rng.normal(size=n) for _ in sites]
    acc = he.CiphertextAccumulator(fed.ceremony.public_context, n, key_id=fed.ceremony.key_id)
    model_bytes = 32 * n
    before = _rss_bytes()
    grown = []
    for site, vec in zip(sites, vectors, strict=True):
        secret = fed.secrets.get(site, fed.secrets["beta"])
        for index, frame in enumerate(he.encrypt_stream(secret, vec, weight=0.25)):
            acc.add(site, index, frame)
        grown.append(_rss_bytes() - before)
    mb = [round(g / 1e6) for g in grown]
    # the first site's chunks become the running sums (plus allocator slack); the later
    # sites leave nothing behind: storing ciphertexts per site would add 32 MB each
    assert grown[-1] < 3 * model_bytes, f"RSS growth per site (MB): {mb}"
    assert grown[-1] - grown[1] < 0.25 * model_bytes, f"RSS growth per site (MB): {mb}"
    got = he.decrypt_stream(fed.secrets["beta"], acc.export(), n)
    assert _rel_err(got, sum(vectors) / 4) < 1e-6


# ---------------------------------------------------------------- stateless server (on disk)


def test_sum_contributions_equals_the_accumulator_and_decrypts_to_the_plain_sum(fed: Federation) -> None:
    n = 3 * CV - 5
    vectors, weights = _updates(n, seed=7)
    frames = {
        site: list(he.encrypt_stream(fed.secrets[site], v, weight=w, chunk_values=CV))
        for site, v, w in zip(SITES, vectors, weights, strict=True)
    }
    layout = {"key_id": fed.ceremony.key_id, "total_values": n, "chunk_values": CV}
    for site in SITES:
        for index, frame in enumerate(frames[site]):
            header = he.check_contribution(frame, chunk_index=index, **layout)
            assert (header.chunk_index, header.contributors) == (index, 1)
    aggregate = [
        he.sum_contributions([frames[s][i] for s in SITES], chunk_index=i, **layout)
        for i in range(he.n_chunks(n, CV))
    ]
    assert [stream.read_chunk_header(f).contributors for f in aggregate] == [3, 3, 3]
    got = he.decrypt_stream(fed.secrets["beta"], reversed(aggregate), n)
    want = sum(w * v for v, w in zip(vectors, weights, strict=True))
    assert _rel_err(got, want) < 1e-6
    np.testing.assert_allclose(got, want, atol=1e-7)


def test_check_contribution_and_sum_refuse_what_does_not_belong(fed: Federation) -> None:
    n = 3 * CV - 5
    layout = {"key_id": fed.ceremony.key_id, "total_values": n, "chunk_values": CV}
    alpha, beta = _frames(fed, "alpha"), _frames(fed, "beta", seed=1)
    with pytest.raises(he.HEError, match="header says index 0, expected 1"):
        he.check_contribution(alpha[0], chunk_index=1, **layout)
    with pytest.raises(he.HEError, match="not this study's key"):
        he.check_contribution(alpha[0], chunk_index=0, **{**layout, "key_id": bytes(16)})
    with pytest.raises(he.HEError, match="vector of"):
        he.check_contribution(alpha[0], chunk_index=0, **{**layout, "total_values": n + 1})
    with pytest.raises(he.HEError, match="ciphertext"):
        he.check_contribution(alpha[0][:60] + bytes(200) + alpha[0][260:], chunk_index=0, **layout)
    with pytest.raises(he.HEError, match="at least 2 contributions, got 1"):
        he.sum_contributions([alpha[0]], chunk_index=0, **layout)
    aggregate = he.sum_contributions([alpha[0], beta[0]], chunk_index=0, **layout)
    with pytest.raises(he.HEError, match="got an aggregate"):  # sums are never summed again
        he.sum_contributions([aggregate, alpha[0]], chunk_index=0, **layout)
    with pytest.raises(he.HEError, match="more than 2 contributions"):
        he.sum_contributions([alpha[0], beta[0], alpha[0]], chunk_index=0, max_contributions=2, **layout)


def test_recipient_key_statement_binds_study_site_and_key(fed: Federation) -> None:
    beta_kex = fed.agreement["beta"].public_key()
    statement = he.sign_recipient_key(STUDY, "beta", beta_kex, fed.signing["beta"])
    pinned = fed.signing["beta"].public_key()
    raw = he.verify_recipient_key(statement, study_id=STUDY, site="beta", signer_public_key=pinned)
    assert raw == beta_kex.public_bytes_raw()
    with pytest.raises(he.HEError, match="expected 'gamma'"):
        he.verify_recipient_key(statement, study_id=STUDY, site="gamma", signer_public_key=pinned)
    with pytest.raises(he.HEError, match="for 'other'"):
        he.verify_recipient_key(statement, study_id="other", site="beta", signer_public_key=pinned)
    # the relaying orchestrator swaps in its own X25519 key: the signature no longer verifies
    swapped = {**statement, "kex_key": X25519PrivateKey.generate().public_key().public_bytes_raw().hex()}
    with pytest.raises(he.HEError, match="does not verify"):
        he.verify_recipient_key(swapped, study_id=STUDY, site="beta", signer_public_key=pinned)
    forged = he.sign_recipient_key(STUDY, "beta", beta_kex, Ed25519PrivateKey.generate())
    with pytest.raises(he.HEError, match="does not verify"):
        he.verify_recipient_key(forged, study_id=STUDY, site="beta", signer_public_key=pinned)
    with pytest.raises(he.HEError, match="malformed"):
        he.verify_recipient_key({"kex_key": "zz"}, study_id=STUDY, site="beta", signer_public_key=pinned)


@pytest.mark.parametrize("workers", [1, 2])
def test_sum_of_stored_contributions_in_worker_processes(fed: Federation, tmp_path, workers: int) -> None:
    n = 3 * CV - 7
    vectors, weights = _updates(n, seed=5)
    layout = {"key_id": fed.ceremony.key_id, "total_values": n, "chunk_values": CV}
    files: list[list[Path]] = [[] for _ in range(he.n_chunks(n, CV))]
    for site, vec, w in zip(SITES, vectors, weights, strict=True):
        for index, frame in enumerate(he.encrypt_stream(fed.secrets[site], vec, weight=w, chunk_values=CV)):
            path = tmp_path / f"{site}-{index}.ckks"
            path.write_bytes(frame)
            files[index].append(path)
    aggregate = list(he.sum_stored_contributions(files, workers=workers, **layout))
    assert [he.read_chunk_header(f).chunk_index for f in aggregate] == [0, 1, 2]
    assert all(he.read_chunk_header(f).contributors == 3 for f in aggregate)
    got = he.decrypt_stream(fed.secrets["beta"], aggregate, n, flood_std=0.0)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    assert np.max(np.abs(got - want)) < 1e-8

    # a frame filed under the wrong index is refused, in the worker as in-process
    files[2][1], files[1][1] = files[1][1], files[2][1]
    with pytest.raises(he.HEError, match="chunk"):
        list(he.sum_stored_contributions(files, workers=workers, **layout))
    with pytest.raises(he.HEError, match="3 chunks"):
        he.sum_stored_contributions(files[:2], workers=workers, **layout)
    with pytest.raises(he.HEError, match="workers"):
        he.sum_stored_contributions(files, workers=0, **layout)
