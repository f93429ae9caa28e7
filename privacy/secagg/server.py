"""`SecAggServer`: the orchestrator's side of a SecAgg+ round (see the package and `round_state` docs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import keys, shamir
from .errors import ProtocolError, SignatureError, ThresholdError
from .messages import EncryptedShare, KeyAdvert, MaskedInput, UnmaskRequest, UnmaskResponse
from .params import SecAggParams
from .prg import apply_masks
from .round_state import RoundState, check_round, commitment


class SecAggServer:
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
        self._round = RoundState(round_id, params)
        self.round_id = round_id
        self.params = params
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
        self._round.phase = "advertise"

    @property
    def phase(self) -> str:
        """The phase this party is in: advertise, share, mask, unmask or done."""
        return self._round.phase

    @property
    def survivors(self) -> tuple[str, ...]:
        """Sites whose masked input is in the sum (set by unmask_request)."""
        return self._survivors

    @property
    def dropped(self) -> tuple[str, ...]:
        """Sites that shared keys but sent no masked input (set by unmask_request)."""
        return self._dropped

    def _order(self, sites: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(sites, key=self._round.positions.__getitem__))

    def _need(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise ThresholdError(
                f"only {count} {what}, threshold is {self.params.threshold}: "
                f"round {self.round_id!r} cannot complete"
            )

    # -- phase 1 --------------------------------------------------------------------------------

    def add_advert(self, msg: KeyAdvert) -> None:
        self._round.expect("advertise")
        if not isinstance(msg, KeyAdvert):
            raise ProtocolError("expected a KeyAdvert")
        check_round(self.round_id, msg.round_id, f"key advert of {msg.site_id!r}")
        if msg.site_id not in self._round.positions:
            raise ProtocolError(f"key advert from unknown site {msg.site_id!r}")
        if msg.site_id in self._adverts:
            raise ProtocolError(f"duplicate key advert from site {msg.site_id!r}")
        if len(msg.c_pk) != keys.PUBLIC_KEY_BYTES or len(msg.s_pk) != keys.PUBLIC_KEY_BYTES:
            raise ProtocolError(f"key advert of {msg.site_id!r}: public keys must be 32 bytes")
        if self._verify_keys is not None:
            vk = self._verify_keys.get(msg.site_id)
            if vk is None:
                raise SignatureError(f"no long-term signing key known for site {msg.site_id!r}")
            keys.verify_advert(
                vk, msg.signature, msg.round_id, msg.site_id, msg.c_pk, msg.s_pk, self._round.digest
            )
        self._adverts[msg.site_id] = msg

    def collect_adverts(self, adverts: Iterable[KeyAdvert] = ()) -> list[KeyAdvert]:
        """Add `adverts`, close phase 1 and return the list to broadcast to every site."""
        for msg in adverts:
            self.add_advert(msg)
        self._round.expect("advertise")
        self._need(len(self._adverts), "sites advertised keys")
        self._round.phase = "share"
        return [self._adverts[s] for s in self._order(self._adverts)]

    # -- phase 2 --------------------------------------------------------------------------------

    def add_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """One site's complete share_keys() output: one share for each advertised neighbour."""
        self._round.expect("share")
        shares = list(shares)
        if not shares or not all(isinstance(m, EncryptedShare) for m in shares):
            raise ProtocolError("expected a non-empty list of EncryptedShare")
        sender = shares[0].sender
        if sender not in self._adverts:
            raise ProtocolError(f"shares from {sender!r}, which did not advertise keys")
        if sender in self._shared:
            raise ProtocolError(f"duplicate shares from site {sender!r}")
        expected = self._round.graph[sender] & self._adverts.keys()
        receivers = []
        for m in shares:
            check_round(self.round_id, m.round_id, f"share from {m.sender!r}")
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
        self._round.expect("share")
        self._need(len(self._shared), "sites shared keys")
        self._round.phase = "mask"
        routes = {s: self._routes.get(s, []) for s in self._order(self._shared)}
        self._routes = {}
        return routes

    # -- phase 3 --------------------------------------------------------------------------------

    def add_masked_input(self, msg: MaskedInput) -> None:
        """Add one masked input to the running uint32 sum (the input itself is not kept)."""
        self._round.expect("mask")
        if not isinstance(msg, MaskedInput):
            raise ProtocolError("expected a MaskedInput")
        check_round(self.round_id, msg.round_id, f"masked input of {msg.site_id!r}")
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
        if self._round.phase != "unmask":
            self._round.expect("mask")
            self._need(len(self._commitments), "sites sent masked inputs")
            self._survivors = self._order(self._commitments)
            self._dropped = self._order(self._shared - self._commitments.keys())
            self._round.phase = "unmask"
        return UnmaskRequest(self.round_id, self._survivors, self._dropped)

    def add_unmask(self, msg: UnmaskResponse) -> None:
        self._round.expect("unmask")
        if not isinstance(msg, UnmaskResponse):
            raise ProtocolError("expected an UnmaskResponse")
        check_round(self.round_id, msg.round_id, f"unmask response of {msg.site_id!r}")
        site = msg.site_id
        if site not in self._commitments:
            raise ProtocolError(f"unmask response from {site!r}, which is not a survivor")
        if site in self._responders:
            raise ProtocolError(f"duplicate unmask response from site {site!r}")
        group = self._round.graph[site] | {site}
        bad_b = msg.b_shares.keys() - (set(self._survivors) & group)
        bad_s = msg.s_shares.keys() - (set(self._dropped) & group)
        if bad_b or bad_s:
            raise ProtocolError(
                f"site {site!r} revealed shares it must not: b of {sorted(bad_b)}, s_sk of {sorted(bad_s)}"
            )
        x = self._round.positions[site]
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
        self._round.expect("unmask")
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
            if commitment(self.round_id, i, b) != self._commitments[i]:
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
            for i in self._order(self._round.graph[j] & survivors):
                seed = keys.agree(s_sk, self._adverts[i].s_pk, "mask", self.round_id, j, i)
                masks.append((seed, -self._round.mask_sign(i, j)))
        assert self._sum is not None  # at least t >= 2 survivors
        apply_masks(self._sum, masks)
        self._round.phase = "done"
        result, self._sum = self._sum, None
        self._b_shares, self._s_shares = {}, {}
        return result
