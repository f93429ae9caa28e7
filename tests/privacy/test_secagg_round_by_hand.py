"""Hand-driven SecAgg+ rounds: the precomputed-mask path and the rejection of bad messages."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
)

ROUND = "study-7/round-3"


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
