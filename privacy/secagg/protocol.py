"""Client and server state machines of the SecAgg+ round (see the package docstring).

Phases (U1 ⊇ U2 ⊇ U3 ⊇ U4 are the sites still present after each):

1. advertise: client.advertise_keys() -> KeyAdvert;  server.collect_adverts(...) -> broadcast
2. share:     client.share_keys(adverts) -> [EncryptedShare]; server.route_shares(...) -> per receiver
3. mask:      client.masked_input(q, shares) -> MaskedInput;  server.add_masked_input(msg), streaming
              (or client.precompute_mask(shares) while training, then client.masked_input(q))
4. unmask:    server.unmask_request() -> UnmaskRequest; client.unmask(survivors, dropped)
              -> UnmaskResponse; server.finish(responses) -> uint32 sum of the survivors' inputs

The server also accepts messages one by one (`add_advert`, `add_shares`, `add_masked_input`,
`add_unmask`) so that each upload is validated when it arrives; the batch methods add
what they are given and then close the phase.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import keys, shamir
from .errors import ProtocolError, SignatureError, ThresholdError
from .graph import degree, neighbour_graph
from .messages import EncryptedShare, KeyAdvert, MaskedInput, UnmaskRequest, UnmaskResponse
from .prg import apply_masks, mask_vector
from .quantize import dequantize_sum, quantize

_MAX_ID = 256


@dataclass(frozen=True)
class SecAggParams:
    """Public parameters of one aggregation, identical at every party.

    sites: every site invited to the round (stored sorted; a site's 1-based position is
    its Shamir x-coordinate and orders the pairwise mask signs). vector_length: number of
    uint32 words per input. clip: symmetric clipping range [-clip, clip] of `quantize`.
    neighbours: None for the complete graph, else k >= 2 for a SecAgg+ graph of degree
    min(2·ceil(k/2), n-1). threshold: t shares reconstruct a secret; each site's share group
    is itself plus its neighbours (m = degree + 1 sites); default floor(m/2)+1, allowed
    floor(m/2)+1 .. m. graph_seed: public string mixed with the round id into the graph.
    """

    sites: tuple[str, ...]
    vector_length: int
    clip: float
    threshold: int | None = None
    neighbours: int | None = None
    graph_seed: str = ""

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        if len(sites) < 2:
            raise ValueError("secure aggregation needs at least 2 sites")
        for s in sites:
            if not isinstance(s, str) or not s or len(s) > _MAX_ID:
                raise ValueError(f"site ids must be non-empty strings of <= {_MAX_ID} chars")
        if len(set(sites)) != len(sites):
            raise ValueError("site ids must be unique")
        object.__setattr__(self, "sites", tuple(sorted(sites)))
        if not _is_int(self.vector_length) or self.vector_length < 1:
            raise ValueError("vector_length must be a positive integer")
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError("clip must be a positive finite number")
        if self.neighbours is not None and (not _is_int(self.neighbours) or self.neighbours < 2):
            raise ValueError("neighbours must be None (complete graph) or an integer >= 2")
        if not isinstance(self.graph_seed, str):
            raise ValueError("graph_seed must be a string")
        m = self.group_size
        t = m // 2 + 1 if self.threshold is None else self.threshold
        if not _is_int(t) or not m // 2 + 1 <= t <= m:
            raise ValueError(f"threshold must be between {m // 2 + 1} and {m} (share group of {m})")
        object.__setattr__(self, "threshold", t)

    @property
    def n_sites(self) -> int:
        return len(self.sites)

    @property
    def group_size(self) -> int:
        """Sites holding shares of one site's secrets: itself and its neighbours."""
        return degree(len(self.sites), self.neighbours) + 1

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON form; signed into every key advert."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).digest()

    def graph(self, round_id: str) -> dict[str, frozenset[str]]:
        seed = hashlib.sha256(keys.encode_context(keys.DOMAIN, "graph", round_id, self.graph_seed))
        return neighbour_graph(self.sites, self.neighbours, seed.digest())

    def quantize(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """`quantize(x, clip, n_sites)`: a float update -> uint32 levels for masked_input."""
        return quantize(x, self.clip, self.n_sites, rng)

    def dequantize_sum(self, q_sum: np.ndarray, n_summed: int) -> np.ndarray:
        """`finish()`'s uint32 sum of `n_summed` inputs -> float64 sum of the clipped updates."""
        return dequantize_sum(q_sum, self.clip, self.n_sites, n_summed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sites": list(self.sites),
            "vector_length": self.vector_length,
            "clip": self.clip,
            "threshold": self.threshold,
            "neighbours": self.neighbours,
            "graph_seed": self.graph_seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        try:
            return cls(
                sites=tuple(d["sites"]),
                vector_length=d["vector_length"],
                clip=d["clip"],
                threshold=d.get("threshold"),
                neighbours=d.get("neighbours"),
                graph_seed=d.get("graph_seed", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"invalid secagg parameters: {exc}") from exc


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_round(round_id: str, msg_round: str, what: str) -> None:
    if msg_round != round_id:
        raise ProtocolError(f"{what} is for round {msg_round!r}, this is round {round_id!r}")


def _commitment(round_id: str, site_id: str, b: int) -> bytes:
    data = keys.encode_context(keys.DOMAIN, "b-commitment", round_id, site_id, shamir.encode(b))
    return hashlib.sha256(data).digest()


class _Party:
    def __init__(self, round_id: str, params: SecAggParams) -> None:
        if not isinstance(round_id, str) or not round_id or len(round_id) > _MAX_ID:
            raise ValueError(f"round_id must be a non-empty string of <= {_MAX_ID} chars")
        if not isinstance(params, SecAggParams):
            raise TypeError("params must be SecAggParams")
        self.round_id = round_id
        self.params = params
        self._digest = params.digest()
        self._x = {s: i + 1 for i, s in enumerate(params.sites)}  # Shamir x-coordinates
        self._graph = params.graph(round_id)
        self._phase = ""

    @property
    def phase(self) -> str:
        return self._phase

    def _expect(self, *phases: str) -> None:
        if self._phase not in phases:
            raise ProtocolError(
                f"message out of phase: expected {' or '.join(phases)}, "
                f"this party is in phase {self._phase!r}"
            )

    def _sign(self, own: str, peer: str) -> int:
        """+1 if `own` adds the pairwise mask shared with `peer`, -1 if it subtracts it."""
        return 1 if self._x[own] < self._x[peer] else -1


class SecAggClient(_Party):
    """One site's side of one round. Methods must be called in phase order, once each."""

    def __init__(
        self,
        site_id: str,
        round_id: str,
        signing_key: Ed25519PrivateKey,
        peer_signing_keys: Mapping[str, Ed25519PublicKey | bytes],
        params: SecAggParams,
    ) -> None:
        super().__init__(round_id, params)
        if site_id not in self._x:
            raise ValueError(f"site {site_id!r} is not in this round's sites")
        self.site_id = site_id
        self._signing_key = signing_key
        self._verify_keys = {s: keys.load_verify_key(k) for s, k in peer_signing_keys.items() if s in self._x}
        self._verify_keys.setdefault(site_id, signing_key.public_key())
        self._neighbours = self._graph[site_id]
        self._c_sk = keys.new_x25519_key()
        self._s_sk = keys.new_x25519_key()
        self._advert: KeyAdvert | None = None
        self._peers: dict[str, KeyAdvert] = {}  # neighbours that advertised (U1 ∩ N(i))
        self._channel: dict[str, bytes] = {}
        self._b = 0
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (b share, s_sk share)
        self._mask: np.ndarray | None = None
        self._phase = "advertise"

    def advertise_keys(self) -> KeyAdvert:
        """Phase 1: fresh X25519 public keys, signed with the long-term Ed25519 key."""
        self._expect("advertise")
        c_pk, s_pk = keys.public_bytes(self._c_sk), keys.public_bytes(self._s_sk)
        sig = keys.sign_advert(self._signing_key, self.round_id, self.site_id, c_pk, s_pk, self._digest)
        self._advert = KeyAdvert(self.round_id, self.site_id, c_pk, s_pk, sig)
        self._phase = "share"
        return self._advert

    def share_keys(self, adverts: Iterable[KeyAdvert]) -> list[EncryptedShare]:
        """Phase 2: verify the broadcast adverts, share b and s_sk with the neighbours."""
        self._expect("share")
        seen: dict[str, KeyAdvert] = {}
        for adv in adverts:
            if not isinstance(adv, KeyAdvert):
                raise ProtocolError("share_keys expects KeyAdvert messages")
            _check_round(self.round_id, adv.round_id, f"key advert of {adv.site_id!r}")
            if adv.site_id not in self._x:
                raise ProtocolError(f"key advert from unknown site {adv.site_id!r}")
            if adv.site_id in seen:
                raise ProtocolError(f"two key adverts from site {adv.site_id!r}")
            vk = self._verify_keys.get(adv.site_id)
            if vk is None:
                raise SignatureError(f"no long-term signing key known for site {adv.site_id!r}")
            keys.verify_advert(vk, adv.signature, adv.round_id, adv.site_id, adv.c_pk, adv.s_pk, self._digest)
            if adv.c_pk == adv.s_pk:
                raise ProtocolError(f"site {adv.site_id!r} advertised the same key twice")
            seen[adv.site_id] = adv
        if seen.get(self.site_id) != self._advert:
            raise ProtocolError("this site's own key advert is missing or altered")
        self._peers = {s: a for s, a in seen.items() if s in self._neighbours}
        holders = sorted([*self._peers, self.site_id], key=self._x.__getitem__)
        t = self.params.threshold
        if len(holders) < t:
            raise ThresholdError(f"only {len(holders)} sites can hold shares, threshold is {t}")
        self._b = shamir.random_element()
        xs = [self._x[h] for h in holders]
        b_sh = shamir.split(self._b, t, xs)
        s_sh = shamir.split(keys.x25519_to_int(self._s_sk), t, xs)
        out = []
        for h in holders:
            x = self._x[h]
            if h == self.site_id:
                self._held[h] = (b_sh[x], s_sh[x])
                continue
            key = keys.agree(self._c_sk, self._peers[h].c_pk, "channel", self.round_id, self.site_id, h)
            self._channel[h] = key
            plain = shamir.encode(b_sh[x]) + shamir.encode(s_sh[x])
            ct = keys.encrypt_share(key, self.round_id, self.site_id, h, plain)
            out.append(EncryptedShare(self.round_id, self.site_id, h, ct))
        self._phase = "mask"
        return out

    def precompute_mask(self, received_shares: Iterable[EncryptedShare]) -> None:
        """Optional, phase 3: take the routed shares and expand the mask now, before the update
        exists (e.g. while training), so that masked_input() is a single vector add.

        Costs one vector of memory until masked_input(); call masked_input without shares.
        """
        self._expect("mask")
        if self._mask is not None:
            raise ProtocolError("the mask is already computed")
        self._mask = mask_vector(self.params.vector_length, self._accept_shares(received_shares))

    def masked_input(
        self, vector: np.ndarray, received_shares: Iterable[EncryptedShare] | None = None
    ) -> MaskedInput:
        """Phase 3: y = vector + PRG(b) + Σ_j ±PRG(s_ij) mod 2^32 over the senders j of shares.

        `vector` is the quantized update (uint32, length params.vector_length, see `quantize`).
        `received_shares` are the shares the server routed to this site (omit them, and only
        them, after precompute_mask).
        """
        self._expect("mask")
        v = np.asarray(vector)
        if v.dtype != np.uint32 or v.shape != (self.params.vector_length,):
            raise ProtocolError(
                f"masked_input expects a uint32 vector of length {self.params.vector_length} "
                f"(quantize first), got {v.dtype} {v.shape}"
            )
        if self._mask is None:
            if received_shares is None:
                raise ProtocolError("masked_input needs the received shares")
            out = np.empty(self.params.vector_length, dtype=np.uint32)
            apply_masks(out, self._accept_shares(received_shares), base=np.ascontiguousarray(v))
        else:
            if received_shares is not None:
                raise ProtocolError("shares were already given to precompute_mask")
            out, self._mask = self._mask, None
            np.add(out, v, out=out)
        self._phase = "unmask"
        return MaskedInput(
            self.round_id, self.site_id, out, _commitment(self.round_id, self.site_id, self._b)
        )

    def _accept_shares(self, received_shares: Iterable[EncryptedShare]) -> list[tuple[bytes, int]]:
        """Decrypt and keep the routed shares; the (seed, sign) list of this site's masks."""
        held = dict(self._held)
        for msg in received_shares:
            if not isinstance(msg, EncryptedShare):
                raise ProtocolError("expected EncryptedShare messages")
            _check_round(self.round_id, msg.round_id, f"share from {msg.sender!r}")
            if msg.receiver != self.site_id:
                raise ProtocolError(f"share addressed to {msg.receiver!r}, not {self.site_id!r}")
            if msg.sender not in self._channel:
                raise ProtocolError(f"share from unexpected sender {msg.sender!r}")
            if msg.sender in held:
                raise ProtocolError(f"two shares from sender {msg.sender!r}")
            plain = keys.decrypt_share(
                self._channel[msg.sender], self.round_id, msg.sender, self.site_id, msg.ciphertext
            )
            if len(plain) != 2 * shamir.SHARE_BYTES:
                raise ProtocolError(f"share from {msg.sender!r} has the wrong size")
            try:
                held[msg.sender] = (shamir.decode(plain[:32]), shamir.decode(plain[32:]))
            except ValueError as exc:
                raise ProtocolError(f"share from {msg.sender!r}: {exc}") from exc
        t = self.params.threshold
        if len(held) < t:
            raise ThresholdError(f"only {len(held)} sites completed key sharing, threshold is {t}")
        masks = [(shamir.encode(self._b), 1)]
        for j in sorted(held, key=self._x.__getitem__):
            if j != self.site_id:
                seed = keys.agree(self._s_sk, self._peers[j].s_pk, "mask", self.round_id, self.site_id, j)
                masks.append((seed, self._sign(self.site_id, j)))
        self._held = held
        return masks

    def unmask(self, survivors: Sequence[str], dropped: Sequence[str]) -> UnmaskResponse:
        """Phase 4: reveal b shares of `survivors` and s_sk shares of `dropped`, never both.

        Refuses (ProtocolError) if a site is in both lists, if this site is not a survivor,
        if a site that shared keys with it is in neither list, or if called twice.
        """
        self._expect("unmask")
        surv, drop = set(survivors), set(dropped)
        unknown = (surv | drop) - self._x.keys()
        if unknown:
            raise ProtocolError(f"unmask request names unknown sites {sorted(unknown)}")
        both = surv & drop
        if both:
            raise ProtocolError(f"refusing to reveal both shares for sites {sorted(both)}")
        if self.site_id not in surv:
            raise ProtocolError("unmask request does not list this site as a survivor")
        missing = self._held.keys() - surv - drop
        if missing:
            raise ProtocolError(f"unmask request omits sites that shared keys: {sorted(missing)}")
        t = self.params.threshold
        alive = len(surv & (self._neighbours | {self.site_id}))
        if alive < t:
            raise ThresholdError(f"only {alive} surviving share holders, threshold is {t}")
        self._phase = "done"
        return UnmaskResponse(
            self.round_id,
            self.site_id,
            {j: b for j, (b, _) in self._held.items() if j in surv},
            {j: s for j, (_, s) in self._held.items() if j in drop},
        )


class SecAggServer(_Party):
    """The orchestrator's side of one round: relays messages, sums masked inputs, unmasks.

    `site_keys` (long-term Ed25519 public keys) is optional: clients always verify the
    adverts; with it the server also rejects forged adverts before broadcasting them.
    Memory: one running uint32 sum of vector_length words plus O(256 KiB) while unmasking.
    """

    def __init__(
        self,
        round_id: str,
        params: SecAggParams,
        site_keys: Mapping[str, Ed25519PublicKey | bytes] | None = None,
    ) -> None:
        super().__init__(round_id, params)
        self._verify_keys = (
            None if site_keys is None else {s: keys.load_verify_key(k) for s, k in site_keys.items()}
        )
        self._adverts: dict[str, KeyAdvert] = {}  # U1
        self._shared: set[str] = set()  # U2
        self._routes: dict[str, list[EncryptedShare]] = {}
        self._commitments: dict[str, bytes] = {}  # U3
        self._sum: np.ndarray | None = None
        self._survivors: tuple[str, ...] = ()
        self._dropped: tuple[str, ...] = ()
        self._responders: set[str] = set()  # U4
        self._b_shares: dict[str, dict[int, int]] = {}
        self._s_shares: dict[str, dict[int, int]] = {}
        self._phase = "advertise"

    @property
    def survivors(self) -> tuple[str, ...]:
        """Sites whose masked input is in the sum (set by unmask_request)."""
        return self._survivors

    @property
    def dropped(self) -> tuple[str, ...]:
        """Sites that shared keys but sent no masked input (set by unmask_request)."""
        return self._dropped

    def _order(self, sites: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(sites, key=self._x.__getitem__))

    def _need(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise ThresholdError(
                f"only {count} {what}, threshold is {self.params.threshold}: "
                f"round {self.round_id!r} cannot complete"
            )

    # -- phase 1 --------------------------------------------------------------------------------

    def add_advert(self, msg: KeyAdvert) -> None:
        self._expect("advertise")
        if not isinstance(msg, KeyAdvert):
            raise ProtocolError("expected a KeyAdvert")
        _check_round(self.round_id, msg.round_id, f"key advert of {msg.site_id!r}")
        if msg.site_id not in self._x:
            raise ProtocolError(f"key advert from unknown site {msg.site_id!r}")
        if msg.site_id in self._adverts:
            raise ProtocolError(f"duplicate key advert from site {msg.site_id!r}")
        if len(msg.c_pk) != keys.PUBLIC_KEY_BYTES or len(msg.s_pk) != keys.PUBLIC_KEY_BYTES:
            raise ProtocolError(f"key advert of {msg.site_id!r}: public keys must be 32 bytes")
        if self._verify_keys is not None:
            vk = self._verify_keys.get(msg.site_id)
            if vk is None:
                raise SignatureError(f"no long-term signing key known for site {msg.site_id!r}")
            keys.verify_advert(vk, msg.signature, msg.round_id, msg.site_id, msg.c_pk, msg.s_pk, self._digest)
        self._adverts[msg.site_id] = msg

    def collect_adverts(self, adverts: Iterable[KeyAdvert] = ()) -> list[KeyAdvert]:
        """Add `adverts`, close phase 1 and return the list to broadcast to every site."""
        for msg in adverts:
            self.add_advert(msg)
        self._expect("advertise")
        self._need(len(self._adverts), "sites advertised keys")
        self._phase = "share"
        return [self._adverts[s] for s in self._order(self._adverts)]

    # -- phase 2 --------------------------------------------------------------------------------

    def add_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """One site's complete share_keys() output: one share for each advertised neighbour."""
        self._expect("share")
        shares = list(shares)
        if not shares or not all(isinstance(m, EncryptedShare) for m in shares):
            raise ProtocolError("expected a non-empty list of EncryptedShare")
        sender = shares[0].sender
        if sender not in self._adverts:
            raise ProtocolError(f"shares from {sender!r}, which did not advertise keys")
        if sender in self._shared:
            raise ProtocolError(f"duplicate shares from site {sender!r}")
        expected = self._graph[sender] & self._adverts.keys()
        receivers = []
        for m in shares:
            _check_round(self.round_id, m.round_id, f"share from {m.sender!r}")
            if m.sender != sender:
                raise ProtocolError("one share list must come from one sender")
            receivers.append(m.receiver)
        if len(set(receivers)) != len(receivers) or set(receivers) != expected:
            raise ProtocolError(f"site {sender!r} must send exactly one share to each of {sorted(expected)}")
        self._shared.add(sender)
        for m in shares:
            self._routes.setdefault(m.receiver, []).append(m)

    def route_shares(
        self, share_lists: Iterable[Sequence[EncryptedShare]] = ()
    ) -> dict[str, list[EncryptedShare]]:
        """Add each site's share list, close phase 2; return receiver -> shares addressed to it.

        Only sites that sent their shares (U2) get an entry; they go on to masked_input.
        """
        for shares in share_lists:
            self.add_shares(shares)
        self._expect("share")
        self._need(len(self._shared), "sites shared keys")
        self._phase = "mask"
        routes = {s: self._routes.get(s, []) for s in self._order(self._shared)}
        self._routes = {}
        return routes

    # -- phase 3 --------------------------------------------------------------------------------

    def add_masked_input(self, msg: MaskedInput) -> None:
        """Add one masked input to the running uint32 sum (the input itself is not kept)."""
        self._expect("mask")
        if not isinstance(msg, MaskedInput):
            raise ProtocolError("expected a MaskedInput")
        _check_round(self.round_id, msg.round_id, f"masked input of {msg.site_id!r}")
        if msg.site_id not in self._shared:
            raise ProtocolError(f"masked input from {msg.site_id!r}, which did not share keys")
        if msg.site_id in self._commitments:
            raise ProtocolError(f"duplicate masked input from site {msg.site_id!r}")
        v = msg.vector
        if v.dtype != np.uint32 or v.shape != (self.params.vector_length,):
            raise ProtocolError(
                f"masked input of {msg.site_id!r} must be {self.params.vector_length}"
                f" uint32 words, got {v.dtype} {v.shape}"
            )
        if len(msg.b_commitment) != 32:
            raise ProtocolError("b_commitment must be 32 bytes")
        if self._sum is None:
            self._sum = np.array(v, dtype=np.uint32, copy=True)
        else:
            np.add(self._sum, v, out=self._sum)
        self._commitments[msg.site_id] = msg.b_commitment

    # -- phase 4 --------------------------------------------------------------------------------

    def unmask_request(self) -> UnmaskRequest:
        """Close phase 3; the request to send to every survivor."""
        if self._phase != "unmask":
            self._expect("mask")
            self._need(len(self._commitments), "sites sent masked inputs")
            self._survivors = self._order(self._commitments)
            self._dropped = self._order(self._shared - self._commitments.keys())
            self._phase = "unmask"
        return UnmaskRequest(self.round_id, self._survivors, self._dropped)

    def add_unmask(self, msg: UnmaskResponse) -> None:
        self._expect("unmask")
        if not isinstance(msg, UnmaskResponse):
            raise ProtocolError("expected an UnmaskResponse")
        _check_round(self.round_id, msg.round_id, f"unmask response of {msg.site_id!r}")
        site = msg.site_id
        if site not in self._commitments:
            raise ProtocolError(f"unmask response from {site!r}, which is not a survivor")
        if site in self._responders:
            raise ProtocolError(f"duplicate unmask response from site {site!r}")
        group = self._graph[site] | {site}
        bad_b = msg.b_shares.keys() - (set(self._survivors) & group)
        bad_s = msg.s_shares.keys() - (set(self._dropped) & group)
        if bad_b or bad_s:
            raise ProtocolError(
                f"site {site!r} revealed shares it must not: b of {sorted(bad_b)}, s_sk of {sorted(bad_s)}"
            )
        x = self._x[site]
        self._responders.add(site)
        for owner, share in msg.b_shares.items():
            self._b_shares.setdefault(owner, {})[x] = share
        for owner, share in msg.s_shares.items():
            self._s_shares.setdefault(owner, {})[x] = share

    def finish(self, unmask_msgs: Iterable[UnmaskResponse] = ()) -> np.ndarray:
        """Add the responses, remove all masks; the exact uint32 sum of the survivors' inputs.

        Dequantize with `params.dequantize_sum(result, len(server.survivors))`.
        """
        for msg in unmask_msgs:
            self.add_unmask(msg)
        self._expect("unmask")
        self._need(len(self._responders), "survivors answered the unmask request")
        t = self.params.threshold
        masks: list[tuple[bytes, int]] = []
        for i in self._survivors:
            shares = self._b_shares.get(i, {})
            if len(shares) < t:
                raise ThresholdError(
                    f"only {len(shares)} shares of site {i!r}'s self-mask seed, threshold is {t}"
                )
            b = shamir.combine(shares, t)
            if _commitment(self.round_id, i, b) != self._commitments[i]:
                raise ProtocolError(
                    f"reconstructed self-mask seed of {i!r} does not match its commitment: a share is wrong"
                )
            masks.append((shamir.encode(b), -1))
        survivors = set(self._survivors)
        for j in self._dropped:
            shares = self._s_shares.get(j, {})
            if len(shares) < t:
                raise ThresholdError(
                    f"only {len(shares)} shares of dropped site {j!r}'s mask key, threshold is {t}"
                )
            s_sk = keys.x25519_from_int(shamir.combine(shares, t))
            if keys.public_bytes(s_sk) != self._adverts[j].s_pk:
                raise ProtocolError(
                    f"reconstructed mask key of {j!r} does not match its advert: a share is wrong"
                )
            for i in self._order(self._graph[j] & survivors):
                seed = keys.agree(s_sk, self._adverts[i].s_pk, "mask", self.round_id, j, i)
                masks.append((seed, -self._sign(i, j)))
        assert self._sum is not None  # at least t >= 2 survivors
        apply_masks(self._sum, masks)
        self._phase = "done"
        result, self._sum = self._sum, None
        self._b_shares, self._s_shares = {}, {}
        return result
