"""The DP CSPRNG: known answers, distributions, stream independence and input checks."""

from __future__ import annotations

import hashlib
import hmac
import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from privacy.csprng import Csprng, KeyStream

KEY = bytes(range(32))


def _aes_ctr(key: bytes, nonce: bytes, n: int) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return enc.update(bytes(n)) + enc.finalize()


def _subkey(key: bytes, label: str, index: int) -> bytes:
    name = label.encode()
    message = b"fedsilo.csprng.v1" + len(name).to_bytes(2, "big") + name + index.to_bytes(8, "big")
    return hmac.new(key, message, hashlib.sha256).digest()


def test_keystream_matches_the_nist_aes256_ctr_vector():
    """SP 800-38A F.5.5 (CTR-AES256.Encrypt): keystream = plaintext XOR ciphertext."""
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plain = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
    cipher = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5")
    ks = KeyStream(key, counter)
    got = ks.bytes(16) + ks.bytes(16)  # two calls continue the same stream
    assert got == bytes(p ^ c for p, c in zip(plain, cipher, strict=True))


def test_streams_are_aes_ctr_under_an_hmac_subkey_and_uniforms_take_53_bits():
    stream = Csprng(KEY).stream("noise", 7)
    expect = _aes_ctr(_subkey(KEY, "noise", 7), bytes(16), 64)
    assert stream.bytes(24) == expect[:24]
    words = np.frombuffer(expect[24:64], dtype="<u8")
    u = stream.random(5)
    assert np.array_equal(u, (words >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    assert ((u >= 0) & (u < 1)).all()


def test_same_key_same_draws_any_other_bit_other_draws():
    a, b = Csprng(KEY).stream("x"), Csprng(KEY).stream("x")
    assert np.array_equal(a.standard_normal(1001), b.standard_normal(1001))
    flipped = KEY[:-1] + bytes([KEY[-1] ^ 1])  # the last bit: a truncated seed would miss it
    c, d = Csprng(KEY).stream("x"), Csprng(flipped).stream("x")
    assert not np.array_equal(c.uint64(4), d.uint64(4))


def test_streams_are_domain_separated():
    rng = Csprng(KEY)
    draws = {
        (label, index): rng.stream(label, index).bytes(32)
        for label in ("units", "frames", "noise", "noise\x00")
        for index in (0, 1, 2**64 - 1)
    }
    assert len(set(draws.values())) == len(draws)
    # consuming one stream never shifts another's draws
    noise = rng.stream("noise").bytes(32)
    units = rng.stream("units")
    units.bytes(1000)
    assert rng.stream("noise").bytes(32) == noise


def test_standard_normals_are_normal():
    z = Csprng(KEY).stream("normals").standard_normal(400_001)
    assert z.dtype == np.float64 and z.shape == (400_001,)
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert abs(z.var() - 1) < 0.01
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(stats.skew(z)) < 0.02 and abs(stats.kurtosis(z)) < 0.04
    # pairs are independent: no correlation between neighbours
    assert abs(np.corrcoef(z[:-1:2], z[1::2])[0, 1]) < 0.01
    f32 = Csprng(KEY).stream("normals").standard_normal(1000, np.float32)
    assert f32.dtype == np.float32 and np.allclose(f32, z[:1000].astype(np.float32))


def test_normals_do_not_depend_on_the_chunking():
    one = Csprng(KEY).stream("n").standard_normal(10)
    again = Csprng(KEY).stream("n")
    assert np.array_equal(again.standard_normal(10), one)
    assert again.standard_normal(0).size == 0


def test_bernoulli_integers_and_samples():
    s = Csprng(KEY).stream("sampling")
    mask = s.bernoulli(0.25, 200_000)
    assert mask.dtype == bool and abs(mask.mean() - 0.25) < 0.005
    assert not s.bernoulli(0.0, 1000).any() and s.bernoulli(1.0, 1000).all()
    ints = s.integers(7, 70_000)
    assert ints.min() == 0 and ints.max() == 6
    assert stats.chisquare(np.bincount(ints, minlength=7)).pvalue > 1e-3
    per_bound = s.integers(np.array([1, 2, 2**63], dtype=np.uint64))
    assert per_bound[0] == 0 and 0 <= per_bound[1] < 2
    counts = np.zeros((5, 5))
    for _ in range(5000):
        pick = s.sample(5, 3)
        assert len(set(pick.tolist())) == 3 and pick.max() < 5
        counts[pick[0], pick[1]] += 1
    off = counts[~np.eye(5, dtype=bool)]
    assert np.diag(counts).sum() == 0 and stats.chisquare(off).pvalue > 1e-3
    assert sorted(s.sample(4, 4).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Csprng(bytes(15)), "at least 16 bytes"),
        (lambda: Csprng(KEY).stream(""), "non-empty"),
        (lambda: Csprng(KEY).stream("x", -1), "index"),
        (lambda: Csprng(KEY).stream("x", 2**64), "index"),
        (lambda: KeyStream(bytes(16)), "32 bytes"),
        (lambda: KeyStream(KEY, bytes(8)), "16 bytes"),
        (lambda: Csprng(KEY).stream("x").random(-1), "size must be >= 0"),
        (lambda: Csprng(KEY).stream("x").random(2.5), "size must be an integer"),
        (lambda: Csprng(KEY).stream("x").random(True), "size must be an integer"),
        (lambda: Csprng(KEY).stream("x").bernoulli(1.5, 3), r"probability must be in \[0, 1\]"),
        (lambda: Csprng(KEY).stream("x").bernoulli(float("nan"), 3), "probability"),
        (lambda: Csprng(KEY).stream("x").integers(0, 3), "bounds must be in"),
        (lambda: Csprng(KEY).stream("x").integers(2.0, 3), "integer"),
        (lambda: Csprng(KEY).stream("x").sample(3, 4), "cannot draw 4 distinct"),
        (lambda: Csprng(KEY).stream("x").standard_normal(3, np.int32), "float64 or float32"),
    ],
)
def test_bad_inputs_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    with pytest.raises(TypeError, match="key must be bytes"):
        Csprng(12345)
