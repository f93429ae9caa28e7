"""The `he` mode's sums: chunked CKKS sums in memory and from disk, sizes, flooding, memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from privacy import he
from privacy.he.encrypt import SaveBuffer, ckks_vector_blob
from privacy.he.frame import NativeCKKSVector
from tests.privacy.he.federation import (
    CV,
    SITES,
    Federation,
    he_aggregate,
    rel_err,
    site_frames,
    weighted_updates,
)

# ---------------------------------------------------------------- sums and chunking


@pytest.mark.parametrize(
    "n",
    [1, 7, he.SLOTS - 1, he.SLOTS, CV, CV + 1, 3 * CV, 3 * CV - 5, 20_011],
)
def test_he_sum_matches_plain_sum(fed: Federation, n: int) -> None:
    vectors, weights = weighted_updates(n, seed=n)
    want = sum(w * v for w, v in zip(weights, vectors, strict=True))
    frames = he_aggregate(fed, vectors, weights)
    assert len(frames) == he.n_chunks(n, CV) == math.ceil(n / CV)
    headers = [he.read_chunk_header(f) for f in frames]
    assert [h.chunk_index for h in headers] == list(range(len(frames)))
    assert sum(h.count for h in headers) == n
    assert all(h.contributors == 3 and h.key_id == fed.ceremony.key_id for h in headers)
    assert all(h.count == CV for h in headers[:-1]) and 1 <= headers[-1].count <= CV

    exact = he.decrypt_stream(fed.secrets["gamma"], frames, n, flood_std=0.0)
    assert np.max(np.abs(exact - want)) < 1e-8
    flooded = he.decrypt_stream(fed.secrets["beta"], reversed(frames), n)  # any order
    assert rel_err(flooded, want) < 1e-6


def test_weighted_average_of_identical_updates_is_the_update(fed: Federation) -> None:
    update = np.linspace(-3.0, 3.0, 5000)
    weights = np.array([0.2, 0.5, 0.3])
    frames = he_aggregate(fed, [update] * 3, weights)
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
    aggregate = he_aggregate(fed, [np.ones(n)] * 3, [0.5, 0.25, 0.25])
    assert 32.0 <= sum(map(len, aggregate)) / n < 32.1


def test_seeded_part_is_what_tenseal_serialize_writes_for_the_same_ciphertext(fed: Federation) -> None:
    """`ckks_vector_blob` reproduces TenSEAL's CKKSVectorProto byte for byte."""
    tctx = fed.secrets["alpha"].context.data
    buffer = SaveBuffer()
    try:
        for n in (1, 77, he.SLOTS):
            vec = NativeCKKSVector(tctx, np.linspace(-1, 1, n).tolist())
            seal_bytes = buffer.save(vec.ciphertext()[0])
            assert ckks_vector_blob(n, seal_bytes) == vec.serialize()
    finally:
        buffer.close()


def test_seeded_and_full_size_contributions_sum_together(fed: Federation) -> None:
    n = 2 * CV + 123
    vectors, weights = weighted_updates(n, seed=3)
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
    vectors, weights = weighted_updates(n, seed=7)
    frames = he_aggregate(fed, vectors, weights)
    exact = he.decrypt_stream(fed.secrets["alpha"], frames, n, flood_std=0.0)
    a = he.decrypt_stream(fed.secrets["beta"], frames, n)
    b = he.decrypt_stream(fed.secrets["gamma"], frames, n)
    assert np.array_equal(a, b)  # same aggregate, same key: same noise at every key holder
    noise = a - exact
    assert abs(noise.mean()) < 5 * he.default_flood_std() / math.sqrt(n)
    assert noise.std() == pytest.approx(he.default_flood_std(), rel=0.05)
    bigger = he.decrypt_stream(fed.secrets["alpha"], frames, n, flood_std=1e-3)
    assert (bigger - exact).std() == pytest.approx(1e-3, rel=0.05)


# ---------------------------------------------------------------- stateless server (on disk)


def test_sum_contributions_equals_the_accumulator_and_decrypts_to_the_plain_sum(fed: Federation) -> None:
    n = 3 * CV - 5
    vectors, weights = weighted_updates(n, seed=7)
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
    assert [he.read_chunk_header(f).contributors for f in aggregate] == [3, 3, 3]
    got = he.decrypt_stream(fed.secrets["beta"], reversed(aggregate), n)
    want = sum(w * v for v, w in zip(vectors, weights, strict=True))
    assert rel_err(got, want) < 1e-6
    np.testing.assert_allclose(got, want, atol=1e-7)


def test_check_contribution_and_sum_refuse_what_does_not_belong(fed: Federation) -> None:
    n = 3 * CV - 5
    layout = {"key_id": fed.ceremony.key_id, "total_values": n, "chunk_values": CV}
    alpha, beta = site_frames(fed, "alpha"), site_frames(fed, "beta", seed=1)
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


@pytest.mark.parametrize("workers", [1, 2])
def test_sum_of_stored_contributions_in_worker_processes(fed: Federation, tmp_path, workers: int) -> None:
    n = 3 * CV - 7
    vectors, weights = weighted_updates(n, seed=5)
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
    assert rel_err(got, sum(vectors) / 4) < 1e-6
