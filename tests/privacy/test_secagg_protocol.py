"""End-to-end SecAgg+ rounds: exact sums under dropouts, and rejection of bad messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privacy.secagg import (
    DecryptionError,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    ProtocolError,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggServer,
    SignatureError,
    ThresholdError,
    UnmaskResponse,
    quantization_step,
)
from privacy.secagg.prg import CHUNK_WORDS
from privacy.secagg.simulate import simulate_round

ROUND = "study-7/round-3"
PHASES = ("advert", "shares", "masked", "unmask")


@st.composite
def scenarios(draw: st.DrawFn, max_n: int = 8, sparse: bool = False) -> dict:
    n = draw(st.integers(2, max_n), label="n")
    neighbours = draw(st.integers(2, max(2, n - 2)), label="k") if sparse else None
    probe = SecAggParams(tuple(f"s{i}" for i in range(n)), 1, 1.0, neighbours=neighbours)
    m = probe.group_size
    t = draw(st.integers(m // 2 + 1, m), label="t")
    length = draw(st.integers(1, 64), label="length")
    # mostly at most m - t drops (the round must complete), sometimes more (it must fail);
    # fate 0 = stays, 1..4 = drops just before advert / shares / masked input / unmask
    max_drops = n if draw(st.integers(0, 4), label="mode") == 4 else m - t
    drops = draw(st.integers(0, max_drops), label="drops")
    order = draw(st.permutations(range(n)), label="who")
    phases = draw(st.lists(st.integers(1, 4), min_size=drops, max_size=drops), label="when")
    fate = [0] * n
    for who, when in zip(order, phases, strict=False):
        fate[who] = when
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    pre = draw(st.lists(st.booleans(), min_size=n, max_size=n), label="precompute")
    return {"n": n, "t": t, "length": length, "fate": fate, "seed": seed, "k": neighbours, "pre": pre}


def _run(sc: dict) -> None:
    sites = tuple(f"site-{i}" for i in range(sc["n"]))
    params = SecAggParams(sites, sc["length"], clip=1.5, threshold=sc["t"], neighbours=sc["k"])
    rng = np.random.default_rng(sc["seed"])
    floats = {s: rng.uniform(-2, 2, sc["length"]) for s in sites}
    inputs = {s: params.quantize(floats[s]) for s in sites}
    drops: dict[str, list[str]] = {p: [] for p in PHASES}
    for s, f in zip(sites, sc["fate"], strict=True):
        if f:
            drops[PHASES[f - 1]].append(s)
    u1 = [s for s in sites if s not in drops["advert"]]
    u2 = [s for s in u1 if s not in drops["shares"]]
    u3 = [s for s in u2 if s not in drops["masked"]]
    u4 = [s for s in u3 if s not in drops["unmask"]]
    graph = params.graph(ROUND)
    group = {s: graph[s] | {s} for s in sites}
    t = params.threshold
    feasible = (
        min(len(u1), len(u2), len(u3), len(u4)) >= t
        and all(len(group[s] & set(u1)) >= t for s in u2)  # share_keys
        and all(len(group[s] & set(u2)) >= t for s in u3)  # masked_input
        and all(len(group[s] & set(u3)) >= t for s in u4)  # unmask
        and all(len(group[s] & set(u4)) >= t for s in u2)  # finish: b or s_sk shares
    )
    try:
        total, survivors = simulate_round(
            params,
            ROUND,
            inputs,
            drop_before_advert=drops["advert"],
            drop_before_shares=drops["shares"],
            drop_before_masked=drops["masked"],
            drop_before_unmask=drops["unmask"],
            precompute=[s for s, p in zip(sites, sc["pre"], strict=True) if p],
        )
    except ThresholdError:
        assert not feasible
        event("too few sites: ThresholdError")
        return
    event(f"exact sum, {sc['n'] - len(u3)} dropped before masking, {len(u3) - len(u4)} after")
    assert feasible
    assert survivors == tuple(sorted(u3))
    expected = np.zeros(sc["length"], np.uint64)
    for s in u3:
        expected += inputs[s]
    assert total.dtype == np.uint32
    assert np.array_equal(total, expected)  # exact, and no wrap-around
    deq = params.dequantize_sum(total, len(u3))
    plain = sum(np.clip(floats[s], -1.5, 1.5) for s in u3)
    step = quantization_step(1.5, params.n_sites)
    assert np.abs(deq - plain).max() <= len(u3) * step


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_secagg_sum_is_exact_under_dropouts(sc: dict) -> None:
    _run(sc)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_secagg_sum_is_exact_under_dropouts_1000_trials(sc: dict) -> None:
    _run(sc)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_n=12, sparse=True))
def test_secagg_plus_sparse_graph_sum_is_exact(sc: dict) -> None:
    _run(sc)


def test_no_dropout_round_and_vector_spanning_chunks() -> None:
    sites = ("a", "b", "c")
    params = SecAggParams(sites, CHUNK_WORDS + 3, clip=1.0)
    rng = np.random.default_rng(0)
    inputs = {s: params.quantize(rng.normal(size=CHUNK_WORDS + 3)) for s in sites}
    total, survivors = simulate_round(params, ROUND, inputs, drop_before_masked=["b"])
    assert survivors == ("a", "c")
    assert np.array_equal(total, inputs["a"] + inputs["c"])


def test_precomputed_mask_gives_the_same_message_path() -> None:
    r = Round()
    routes = r.shares()
    c = r.clients["site-0"]
    with pytest.raises(ProtocolError, match="needs the received shares"):
        c.masked_input(r.q["site-0"])
    c.precompute_mask(routes["site-0"])
    with pytest.raises(ProtocolError, match="already"):
        c.precompute_mask(routes["site-0"])
    with pytest.raises(ProtocolError, match="already given"):
        c.masked_input(r.q["site-0"], routes["site-0"])
    r.server.add_masked_input(c.masked_input(r.q["site-0"]))
    for s in r.sites[1:]:
        r.server.add_masked_input(r.clients[s].masked_input(r.q[s], routes[s]))
    req = r.server.unmask_request()
    total = r.server.finish([r.clients[s].unmask(req.survivors, req.dropped) for s in r.sites])
    assert np.array_equal(total, sum(r.q.values()))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_sparse_graph_is_symmetric_regular_and_deterministic(k: int) -> None:
    params = SecAggParams(tuple(f"s{i:02d}" for i in range(20)), 4, 1.0, neighbours=k)
    g = params.graph(ROUND)
    assert g == params.graph(ROUND)
    assert g != params.graph("another round")
    deg = 2 * -(-k // 2)
    assert params.group_size == deg + 1
    for s, nb in g.items():
        assert len(nb) == deg and s not in nb
        assert all(s in g[o] for o in nb)


# ---- a hand-driven round for the rejection tests ---------------------------------------------


class Round:
    """Four sites driven phase by phase, messages kept for tampering."""

    def __init__(self, n: int = 4, threshold: int | None = None) -> None:
        self.sites = tuple(f"site-{i}" for i in range(n))
        self.params = SecAggParams(self.sites, 16, 1.0, threshold=threshold)
        self.sk = {s: Ed25519PrivateKey.generate() for s in self.sites}
        self.pk = {s: k.public_key() for s, k in self.sk.items()}
        self.clients = {s: SecAggClient(s, ROUND, self.sk[s], self.pk, self.params) for s in self.sites}
        self.server = SecAggServer(ROUND, self.params, self.pk)
        self.q = {s: np.full(16, i + 1, np.uint32) for i, s in enumerate(self.sites)}

    def adverts(self) -> list[KeyAdvert]:
        self.own = [self.clients[s].advertise_keys() for s in self.sites]
        return self.server.collect_adverts(self.own)

    def shares(self) -> dict[str, list[EncryptedShare]]:
        self.broadcast = self.adverts()
        self.share_lists = [self.clients[s].share_keys(self.broadcast) for s in self.sites]
        return self.server.route_shares(self.share_lists)

    def masked(self, sites: tuple[str, ...] | None = None) -> None:
        self.routes = self.shares()
        for s in self.sites if sites is None else sites:
            self.server.add_masked_input(self.clients[s].masked_input(self.q[s], self.routes[s]))


def _forge(adv: KeyAdvert, **changes: object) -> KeyAdvert:
    return dataclasses.replace(adv, **changes)


def test_exception_hierarchy() -> None:
    for exc in (SignatureError, DecryptionError, ThresholdError):
        assert issubclass(exc, ProtocolError)
    assert issubclass(ProtocolError, SecAggError)


def test_forged_key_signature_is_rejected_by_clients_and_server() -> None:
    r = Round()
    own = [r.clients[s].advertise_keys() for s in r.sites]
    mallory = Ed25519PrivateKey.generate()
    forged = _forge(own[1], signature=mallory.sign(b"anything"))
    with pytest.raises(SignatureError):
        r.server.add_advert(forged)
    with pytest.raises(SignatureError):
        r.clients["site-0"].share_keys([own[0], forged, *own[2:]])


def test_server_cannot_substitute_keys() -> None:
    r = Round()
    own = [r.clients[s].advertise_keys() for s in r.sites]
    evil = SecAggClient("site-1", ROUND, Ed25519PrivateKey.generate(), r.pk, r.params)
    swapped = _forge(own[1], c_pk=evil.advertise_keys().c_pk)
    with pytest.raises(SignatureError):
        r.clients["site-0"].share_keys([own[0], swapped, *own[2:]])
    lax_server = SecAggServer(ROUND, r.params)  # no long-term keys: clients still check
    broadcast = lax_server.collect_adverts([own[0], swapped, *own[2:]])
    with pytest.raises(SignatureError):
        r.clients["site-2"].share_keys(broadcast)


def test_sites_given_different_parameters_do_not_verify_each_other() -> None:
    r = Round()  # t = 3
    lenient = dataclasses.replace(r.params, threshold=4)
    odd = SecAggClient("site-1", ROUND, r.sk["site-1"], r.pk, lenient)
    own = [r.clients[s].advertise_keys() for s in r.sites]
    own[1] = odd.advertise_keys()
    with pytest.raises(SignatureError, match="parameters"):
        r.clients["site-0"].share_keys(own)
    with pytest.raises(SignatureError):
        r.server.collect_adverts(own)


def test_own_advert_altered_or_missing_is_rejected() -> None:
    r = Round()
    own = [r.clients[s].advertise_keys() for s in r.sites]
    with pytest.raises(ProtocolError, match="own key advert"):
        r.clients["site-0"].share_keys(own[1:])


def test_wrong_round_ids_are_rejected_everywhere() -> None:
    r = Round()
    other = SecAggClient("site-0", "other-round", r.sk["site-0"], r.pk, r.params)
    stale = other.advertise_keys()  # validly signed, but for another round
    with pytest.raises(ProtocolError, match="round"):
        r.server.add_advert(stale)
    r.masked(sites=("site-0", "site-1", "site-2"))
    share = r.routes["site-3"][0]
    with pytest.raises(ProtocolError, match="round"):
        r.clients["site-3"].masked_input(r.q["site-3"], [_forge(share, round_id="other-round")])
    msg = r.clients["site-3"].masked_input(r.q["site-3"], r.routes["site-3"])
    with pytest.raises(ProtocolError, match="round"):
        r.server.add_masked_input(dataclasses.replace(msg, round_id="other-round"))
    r.server.add_masked_input(msg)
    req = r.server.unmask_request()
    resp = r.clients["site-0"].unmask(req.survivors, req.dropped)
    with pytest.raises(ProtocolError, match="round"):
        r.server.add_unmask(dataclasses.replace(resp, round_id="other-round"))
    fresh = Round()
    fresh.clients["site-1"].advertise_keys()
    with pytest.raises(SignatureError):  # a signature for one round never verifies for another
        fresh.clients["site-1"].share_keys([_forge(stale, round_id=ROUND)])


def test_shares_from_another_round_fail_authentication() -> None:
    a, b = Round(), Round()
    a.shares()
    routes_b = b.shares()
    replayed = routes_b["site-1"]  # right round id and names, wrong channel keys
    with pytest.raises(DecryptionError):
        a.clients["site-1"].masked_input(a.q["site-1"], replayed)


def test_tampered_share_is_rejected() -> None:
    r = Round()
    routes = r.shares()
    good = routes["site-2"]
    ct = bytearray(good[0].ciphertext)
    ct[20] ^= 1
    with pytest.raises(DecryptionError):
        r.clients["site-2"].masked_input(r.q["site-2"], [_forge(good[0], ciphertext=bytes(ct))])
    with pytest.raises(DecryptionError):  # re-labelled sender: associated data no longer matches
        r.clients["site-2"].masked_input(r.q["site-2"], [_forge(good[0], ciphertext=good[1].ciphertext)])
    with pytest.raises(ProtocolError, match="addressed"):
        r.clients["site-2"].masked_input(r.q["site-2"], routes["site-3"])


def test_duplicate_and_unknown_senders_are_rejected() -> None:
    r = Round()
    own = [r.clients[s].advertise_keys() for s in r.sites]
    r.server.add_advert(own[0])
    with pytest.raises(ProtocolError, match="duplicate"):
        r.server.add_advert(own[0])
    with pytest.raises(ProtocolError, match="unknown"):
        r.server.add_advert(_forge(own[1], site_id="intruder"))
    with pytest.raises(ProtocolError, match="two key adverts"):
        r.clients["site-1"].share_keys([*own, own[2]])
    for a in own[1:]:
        r.server.add_advert(a)
    broadcast = r.server.collect_adverts()
    lists = [r.clients[s].share_keys(broadcast) for s in r.sites]
    r.server.add_shares(lists[0])
    with pytest.raises(ProtocolError, match="duplicate"):
        r.server.add_shares(lists[0])
    with pytest.raises(ProtocolError, match="exactly one share"):
        r.server.add_shares(lists[1][:-1])
    with pytest.raises(ProtocolError, match="one sender"):
        r.server.add_shares([*lists[2][:-1], lists[3][0]])
    for lst in lists[1:]:
        r.server.add_shares(lst)
    routes = r.server.route_shares()
    with pytest.raises(ProtocolError, match="two shares"):
        r.clients["site-0"].masked_input(r.q["site-0"], [*routes["site-0"], routes["site-0"][0]])
    msgs = {s: r.clients[s].masked_input(r.q[s], routes[s]) for s in r.sites}
    r.server.add_masked_input(msgs["site-0"])
    with pytest.raises(ProtocolError, match="duplicate"):
        r.server.add_masked_input(msgs["site-0"])
    with pytest.raises(ProtocolError, match="did not share"):
        r.server.add_masked_input(dataclasses.replace(msgs["site-1"], site_id="intruder"))
    for s in r.sites[1:]:
        r.server.add_masked_input(msgs[s])
    req = r.server.unmask_request()
    resp = r.clients["site-0"].unmask(req.survivors, req.dropped)
    r.server.add_unmask(resp)
    with pytest.raises(ProtocolError, match="duplicate"):
        r.server.add_unmask(resp)


def test_wrong_vector_length_is_rejected() -> None:
    r = Round()
    routes = r.shares()
    with pytest.raises(ProtocolError, match="length 16"):
        r.clients["site-0"].masked_input(np.zeros(15, np.uint32), routes["site-0"])
    with pytest.raises(ProtocolError, match="quantize first"):
        r.clients["site-0"].masked_input(np.zeros(16, np.float32), routes["site-0"])
    msg = r.clients["site-0"].masked_input(r.q["site-0"], routes["site-0"])
    short = MaskedInput(ROUND, "site-0", msg.vector[:-1], msg.b_commitment)
    with pytest.raises(ProtocolError, match="16"):
        r.server.add_masked_input(short)
    with pytest.raises(ProtocolError, match="bytes"):
        MaskedInput.from_wire(msg.header(), bytes(msg.body())[:-4])


def test_messages_in_the_wrong_phase_are_rejected() -> None:
    r = Round()
    c = r.clients["site-0"]
    with pytest.raises(ProtocolError, match="phase"):
        c.masked_input(r.q["site-0"], [])
    with pytest.raises(ProtocolError, match="phase"):
        c.unmask(r.sites, ())
    with pytest.raises(ProtocolError, match="phase"):
        r.server.route_shares()
    with pytest.raises(ProtocolError, match="phase"):
        r.server.finish()
    adv = c.advertise_keys()
    with pytest.raises(ProtocolError, match="phase"):
        c.advertise_keys()
    r.server.add_advert(adv)
    with pytest.raises(ProtocolError, match="phase"):
        r.server.unmask_request()
    for s in r.sites[1:]:
        r.server.add_advert(r.clients[s].advertise_keys())
    r.server.collect_adverts()
    with pytest.raises(ProtocolError, match="phase"):
        r.server.add_advert(adv)


def test_client_refuses_to_reveal_both_shares_for_a_peer() -> None:
    r = Round()
    r.masked(sites=("site-0", "site-1", "site-2"))
    c = r.clients["site-0"]
    with pytest.raises(ProtocolError, match="both shares"):
        c.unmask(["site-0", "site-1", "site-2", "site-3"], ["site-3"])
    with pytest.raises(ProtocolError, match="not list this site"):
        c.unmask(["site-1", "site-2", "site-3"], ["site-0"])
    with pytest.raises(ProtocolError, match="omits"):
        c.unmask(["site-0", "site-1", "site-2"], [])
    resp = c.unmask(["site-0", "site-1", "site-2"], ["site-3"])
    assert set(resp.b_shares) == {"site-0", "site-1", "site-2"}
    assert set(resp.s_shares) == {"site-3"}
    with pytest.raises(ProtocolError, match="phase"):  # a second request would get b of site-3
        c.unmask(r.sites, [])


def test_server_rejects_responses_that_reveal_the_wrong_share() -> None:
    r = Round()
    r.masked(sites=("site-0", "site-1", "site-2"))
    r.server.unmask_request()
    resp = r.clients["site-0"].unmask(["site-0", "site-1", "site-2"], ["site-3"])
    bad = dataclasses.replace(resp, b_shares={**resp.b_shares, "site-3": 5})
    with pytest.raises(ProtocolError, match="must not"):
        r.server.add_unmask(bad)


def test_fewer_than_t_survivors_raises() -> None:
    r = Round(n=5)  # t = 3
    assert r.params.threshold == 3
    r.masked(sites=("site-0", "site-1"))
    with pytest.raises(ThresholdError, match="only 2 sites sent masked inputs, threshold is 3"):
        r.server.unmask_request()
    with pytest.raises(ThresholdError):
        r.clients["site-0"].unmask(["site-0", "site-1"], ["site-2", "site-3", "site-4"])


def test_fewer_than_t_unmask_responses_raises() -> None:
    r = Round(n=5)
    r.masked()
    req = r.server.unmask_request()
    answers = [r.clients[s].unmask(req.survivors, req.dropped) for s in r.sites[:2]]
    with pytest.raises(ThresholdError, match="answered"):
        r.server.finish(answers)


def test_a_corrupted_revealed_share_is_detected() -> None:
    r = Round(n=4, threshold=4)
    r.masked(sites=("site-0", "site-1", "site-2", "site-3"))
    req = r.server.unmask_request()
    answers = [r.clients[s].unmask(req.survivors, req.dropped) for s in r.sites]
    a0 = answers[0]
    answers[0] = UnmaskResponse(
        a0.round_id, a0.site_id, {**a0.b_shares, "site-2": a0.b_shares["site-2"] ^ 1}, {}
    )
    with pytest.raises(ProtocolError, match="commitment"):
        r.server.finish(answers)


def test_a_corrupted_mask_key_share_is_detected() -> None:
    r = Round(n=4, threshold=3)
    r.masked(sites=("site-0", "site-1", "site-2"))
    req = r.server.unmask_request()
    answers = [r.clients[s].unmask(req.survivors, req.dropped) for s in req.survivors]
    a0 = answers[0]
    # (a change within X25519's clamped low bits would give the same key: flip a high bit)
    answers[0] = dataclasses.replace(a0, s_shares={"site-3": a0.s_shares["site-3"] ^ 1 << 100})
    with pytest.raises(ProtocolError, match="advert"):
        r.server.finish(answers)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 2}, "between 3 and 4"),
        ({"threshold": 5}, "between 3 and 4"),
        ({"sites": ("a",)}, "at least 2"),
        ({"sites": ("a", "a", "b")}, "unique"),
        ({"vector_length": 0}, "vector_length"),
        ({"clip": 0.0}, "clip"),
        ({"neighbours": 1}, "neighbours"),
    ],
)
def test_params_are_validated(kwargs: dict, match: str) -> None:
    base = {"sites": ("a", "b", "c", "d"), "vector_length": 8, "clip": 1.0}
    with pytest.raises(ValueError, match=match):
        SecAggParams(**{**base, **kwargs})
