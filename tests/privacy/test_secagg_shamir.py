"""Shamir secret sharing over GF(2^255 - 19)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.secagg import shamir

P = shamir.PRIME
elements = st.integers(min_value=0, max_value=P - 1)


def test_prime_is_the_curve25519_prime() -> None:
    assert P == 2**255 - 19
    for a in (2, 3, 5, 7, 11):
        assert pow(a, P - 1, P) == 1  # Fermat witness check


@settings(max_examples=200, deadline=None)
@given(secret=elements, n=st.integers(1, 12), data=st.data())
def test_any_t_of_n_shares_reconstruct(secret: int, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n), label="t")
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs)
    assert sorted(shares) == sorted(xs)
    subset = data.draw(st.permutations(xs))[: data.draw(st.integers(t, n), label="k")]
    assert shamir.combine({x: shares[x] for x in subset}, t) == secret
    assert shamir.lagrange_eval({x: shares[x] for x in subset}, 0) == secret


@settings(max_examples=200, deadline=None)
@given(s1=elements, s2=elements, n=st.integers(2, 10), data=st.data())
def test_t_minus_1_shares_are_consistent_with_any_secret(
    s1: int, s2: int, n: int, data: st.DataObject
) -> None:
    """The t-1 shares of s1 also lie on a degree t-1 polynomial hiding s2 (and any secret)."""
    t = data.draw(st.integers(2, n), label="t")
    xs = list(range(1, n + 1))
    shares = shamir.split(s1, t, xs)
    seen = data.draw(st.permutations(xs))[: t - 1]
    known = {x: shares[x] for x in seen}
    for secret in (s1, s2):
        points = {0: secret, **known}  # t points: a unique polynomial of degree <= t-1
        completed = {x: shamir.lagrange_eval(points, x) for x in xs}
        assert all(completed[x] == known[x] for x in seen)
        assert shamir.combine(completed, t) == secret
        other = [x for x in xs if x not in seen]
        if other:  # any t of the completed shares, including one unseen, give this secret
            chosen = {x: completed[x] for x in [*seen, other[-1]]}
            assert shamir.combine(chosen, t) == secret


def test_fewer_than_t_shares_cannot_combine() -> None:
    shares = shamir.split(42, 3, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="3 needed"):
        shamir.combine({1: shares[1], 2: shares[2]}, 3)


@pytest.mark.parametrize(
    ("secret", "t", "xs"),
    [(P, 2, [1, 2]), (-1, 2, [1, 2]), (1, 3, [1, 2]), (1, 0, [1]), (1, 2, [1, 1]), (1, 2, [0, 1])],
)
def test_split_rejects_bad_arguments(secret: int, t: int, xs: list[int]) -> None:
    with pytest.raises(ValueError):
        shamir.split(secret, t, xs)


@given(elements)
def test_encode_decode_round_trip(v: int) -> None:
    assert shamir.decode(shamir.encode(v)) == v


def test_decode_rejects_non_canonical() -> None:
    with pytest.raises(ValueError):
        shamir.decode(P.to_bytes(32, "little"))
    with pytest.raises(ValueError):
        shamir.decode(b"\x01" * 31)
