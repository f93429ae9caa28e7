"""Site-side `he`: encryption input checks, worker processes, decryption refusals."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from privacy import he
from privacy.he import encrypt
from tests.privacy.he.federation import CV, SITES, Federation, he_aggregate, site_frames, weighted_updates

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
    vectors, weights = weighted_updates(n, seed=21)
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

    monkeypatch.setattr(multiprocessing, "current_process", Daemon)
    monkeypatch.setattr(encrypt, "ordered_in_pool", no_pool)
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
    vectors, weights = weighted_updates(n)
    frames = he_aggregate(fed, vectors, weights)
    secret = fed.secrets["beta"]
    with pytest.raises(he.HEError, match="single site's contribution"):
        he.decrypt_stream(secret, site_frames(fed, "alpha"), n)
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
    for index, frame in enumerate(site_frames(fed, "alpha", n)):
        single.add("alpha", index, frame)
    lone = list(single.export())
    with pytest.raises(he.HEError, match="1 site"):
        he.decrypt_stream(secret, lone, n)  # an "aggregate" of one site is one site's update
    assert he.decrypt_stream(secret, lone, n, min_contributors=1).shape == (n,)
