"""Mask expansion (AES-CTR PRG) and pairwise mask cancellation."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import keys
from privacy.secagg.prg import CHUNK_WORDS, apply_masks, mask_vector, prg_uint32

seeds = st.binary(min_size=32, max_size=32)


def test_prg_is_aes_ctr_keyed_by_hkdf_of_the_seed() -> None:
    seed = bytes(range(32))
    key = HKDF(hashes.SHA256(), 16, None, b"fedsilo-secagg/v1/prg").derive(seed)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(400))
    assert np.array_equal(prg_uint32(seed, 100), np.frombuffer(stream, "<u4"))


def test_stream_is_consistent_across_chunk_boundaries() -> None:
    seed = b"s" * 32
    long = prg_uint32(seed, CHUNK_WORDS + 1000)
    assert np.array_equal(prg_uint32(seed, CHUNK_WORDS + 7), long[: CHUNK_WORDS + 7])
    assert np.array_equal(prg_uint32(seed, 5), long[:5])
    assert not np.array_equal(prg_uint32(b"t" * 32, 5), long[:5])


@settings(max_examples=50, deadline=None)
@given(
    masks=st.lists(st.tuples(seeds, st.sampled_from([1, -1])), max_size=6),
    length=st.integers(1, 3000),
    base_seed=st.integers(0, 2**32 - 1),
)
def test_masks_cancel_when_reapplied_with_opposite_signs(
    masks: list[tuple[bytes, int]], length: int, base_seed: int
) -> None:
    x = np.random.default_rng(base_seed).integers(0, 2**32, length, dtype=np.uint32)
    y = np.empty_like(x)
    apply_masks(y, masks, base=x)
    expected = x.copy()
    for seed, sign in masks:  # the chunked sum equals the naive one
        expected += np.uint32(1 if sign == 1 else 2**32 - 1) * prg_uint32(seed, length)
    assert np.array_equal(y, expected)
    apply_masks(y, [(s, -g) for s, g in masks])
    assert np.array_equal(y, x)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), length=st.integers(1, 500))
def test_pairwise_masks_cancel_in_the_sum(n: int, length: int) -> None:
    sites = [f"site-{i}" for i in range(n)]
    sk = {s: keys.new_x25519_key() for s in sites}
    pk = {s: keys.public_bytes(k) for s, k in sk.items()}
    total = np.zeros(length, np.uint32)
    for i, a in enumerate(sites):
        masks = [
            (keys.agree(sk[a], pk[b], "mask", "r", a, b), 1 if i < j else -1)
            for j, b in enumerate(sites)
            if b != a
        ]
        masked = np.zeros(length, np.uint32)
        apply_masks(masked, masks)
        assert n == 2 or masked.any()
        total += masked
    assert not total.any()


def test_agreement_is_symmetric_and_bound_to_context() -> None:
    a, b = keys.new_x25519_key(), keys.new_x25519_key()
    ab = keys.agree(a, keys.public_bytes(b), "mask", "r1", "x", "y")
    assert ab == keys.agree(b, keys.public_bytes(a), "mask", "r1", "y", "x")
    assert ab != keys.agree(a, keys.public_bytes(b), "mask", "r2", "x", "y")
    assert ab != keys.agree(a, keys.public_bytes(b), "channel", "r1", "x", "y")
    assert ab != keys.agree(a, keys.public_bytes(b), "mask", "r1", "x", "z")


def test_apply_masks_validates_arguments() -> None:
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.int64), [])
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.uint32), [(b"s" * 32, 2)])
    with pytest.raises(ValueError):
        apply_masks(np.zeros(4, np.uint32), [(b"short", 1)])


@settings(max_examples=30, deadline=None)
@given(
    masks=st.lists(st.tuples(seeds, st.sampled_from([1, -1])), max_size=4),
    length=st.sampled_from([1, 7, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 5, 2 * CHUNK_WORDS + 3]),
)
def test_mask_vector_equals_masks_applied_to_zeros(masks: list[tuple[bytes, int]], length: int) -> None:
    expected = apply_masks(np.zeros(length, np.uint32), masks)
    assert np.array_equal(mask_vector(length, masks), expected)
    naive = np.zeros(length, np.uint32)
    for seed, sign in masks:
        naive += np.uint32(1 if sign == 1 else 2**32 - 1) * prg_uint32(seed, length)
    assert np.array_equal(expected, naive)


def test_every_word_is_masked_across_chunks() -> None:
    # a mask covers every position: no word of the target is left unmasked at chunk edges
    length = 2 * CHUNK_WORDS + 11
    base = np.arange(length, dtype=np.uint32)
    out = np.empty_like(base)
    apply_masks(out, [(b"a" * 32, 1), (b"b" * 32, -1)], base=base)
    assert np.count_nonzero(out == base) < 4  # ~length / 2^32 chance coincidences
    assert np.array_equal(out - base, prg_uint32(b"a" * 32, length) - prg_uint32(b"b" * 32, length))
