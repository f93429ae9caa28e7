"""`SecAggClient`: one site's side of a SecAgg+ round (see the package and `round_state` docs)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import keys, shamir
from .errors import ProtocolError, SignatureError, ThresholdError
from .messages import EncryptedShare, KeyAdvert, MaskedInput, UnmaskResponse
from .params import SecAggParams
from .prg import apply_masks, mask_vector
from .round_state import RoundState, check_round, commitment


class SecAggClient:
    """One site's side of one round. Methods must be called in phase order, once each."""

    def __init__(
        self,
        site_id: str,
        round_id: str,
        signing_key: Ed25519PrivateKey,
        peer_signing_keys: Mapping[str, Ed25519PublicKey | bytes],
        params: SecAggParams,
    ) -> None:
        self._round = RoundState(round_id, params)
        self.round_id = round_id
        self.params = params
        if site_id not in self._round.positions:
            raise ValueError(f"site {site_id!r} is not in this round's sites")
        self.site_id = site_id
        self._signing_key = signing_key
        self._verify_keys = {
            s: keys.load_verify_key(k) for s, k in peer_signing_keys.items() if s in self._round.positions
        }
        self._verify_keys.setdefault(site_id, signing_key.public_key())
        self._neighbours = self._round.graph[site_id]
        self._c_sk = keys.new_x25519_key()
        self._s_sk = keys.new_x25519_key()
        self._advert: KeyAdvert | None = None
        self._peers: dict[str, KeyAdvert] = {}  # neighbours that advertised (U1 ∩ N(i))
        self._channel: dict[str, bytes] = {}
        self._b = 0
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (b share, s_sk share)
        self._mask: np.ndarray | None = None
        self._round.phase = "advertise"

    @property
    def phase(self) -> str:
        """The phase this party is in: advertise, share, mask, unmask or done."""
        return self._round.phase

    def advertise_keys(self) -> KeyAdvert:
        """Phase 1: fresh X25519 public keys, signed with the long-term Ed25519 key."""
        self._round.expect("advertise")
        c_pk, s_pk = keys.public_bytes(self._c_sk), keys.public_bytes(self._s_sk)
        sig = keys.sign_advert(self._signing_key, self.round_id, self.site_id, c_pk, s_pk, self._round.digest)
        self._advert = KeyAdvert(self.round_id, self.site_id, c_pk, s_pk, sig)
        self._round.phase = "share"
        return self._advert

    def share_keys(self, adverts: Iterable[KeyAdvert]) -> list[EncryptedShare]:
        """Phase 2: verify the broadcast adverts, share b and s_sk with the neighbours."""
        self._round.expect("share")
        seen: dict[str, KeyAdvert] = {}
        for adv in adverts:
            if not isinstance(adv, KeyAdvert):
                raise ProtocolError("share_keys expects KeyAdvert messages")
            check_round(self.round_id, adv.round_id, f"key advert of {adv.site_id!r}")
            if adv.site_id not in self._round.positions:
                raise ProtocolError(f"key advert from unknown site {adv.site_id!r}")
            if adv.site_id in seen:
                raise ProtocolError(f"two key adverts from site {adv.site_id!r}")
            vk = self._verify_keys.get(adv.site_id)
            if vk is None:
                raise SignatureError(f"no long-term signing key known for site {adv.site_id!r}")
            keys.verify_advert(
                vk, adv.signature, adv.round_id, adv.site_id, adv.c_pk, adv.s_pk, self._round.digest
            )
            if adv.c_pk == adv.s_pk:
                raise ProtocolError(f"site {adv.site_id!r} advertised the same key twice")
            seen[adv.site_id] = adv
        if seen.get(self.site_id) != self._advert:
            raise ProtocolError("this site's own key advert is missing or altered")
        self._peers = {s: a for s, a in seen.items() if s in self._neighbours}
        holders = sorted([*self._peers, self.site_id], key=self._round.positions.__getitem__)
        t = self.params.threshold
        if len(holders) < t:
            raise ThresholdError(f"only {len(holders)} sites can hold shares, threshold is {t}")
        self._b = shamir.random_element()
        xs = [self._round.positions[h] for h in holders]
        b_sh = shamir.split(self._b, t, xs)
        s_sh = shamir.split(keys.x25519_to_int(self._s_sk), t, xs)
        out = []
        for h in holders:
            x = self._round.positions[h]
            if h == self.site_id:
                self._held[h] = (b_sh[x], s_sh[x])
                continue
            key = keys.agree(self._c_sk, self._peers[h].c_pk, "channel", self.round_id, self.site_id, h)
            self._channel[h] = key
            plain = shamir.encode(b_sh[x]) + shamir.encode(s_sh[x])
            ct = keys.encrypt_share(key, self.round_id, self.site_id, h, plain)
            out.append(EncryptedShare(self.round_id, self.site_id, h, ct))
        self._round.phase = "mask"
        return out

    def precompute_mask(self, received_shares: Iterable[EncryptedShare]) -> None:
        """Optional, phase 3: take the routed shares and expand the mask now, before the update
        exists (e.g. while training), so that masked_input() is a single vector add.

        Costs one vector of memory until masked_input(); call masked_input without shares.
        """
        self._round.expect("mask")
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
        self._round.expect("mask")
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
        self._round.phase = "unmask"
        return MaskedInput(
            self.round_id, self.site_id, out, commitment(self.round_id, self.site_id, self._b)
        )

    def _accept_shares(self, received_shares: Iterable[EncryptedShare]) -> list[tuple[bytes, int]]:
        """Decrypt and keep the routed shares; the (seed, sign) list of this site's masks."""
        held = dict(self._held)
        for msg in received_shares:
            if not isinstance(msg, EncryptedShare):
                raise ProtocolError("expected EncryptedShare messages")
            check_round(self.round_id, msg.round_id, f"share from {msg.sender!r}")
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
        for j in sorted(held, key=self._round.positions.__getitem__):
            if j != self.site_id:
                seed = keys.agree(self._s_sk, self._peers[j].s_pk, "mask", self.round_id, self.site_id, j)
                masks.append((seed, self._round.mask_sign(self.site_id, j)))
        self._held = held
        return masks

    def unmask(self, survivors: Sequence[str], dropped: Sequence[str]) -> UnmaskResponse:
        """Phase 4: reveal b shares of `survivors` and s_sk shares of `dropped`, never both.

        Refuses (ProtocolError) if a site is in both lists, if this site is not a survivor,
        if a site that shared keys with it is in neither list, or if called twice.
        """
        self._round.expect("unmask")
        surv, drop = set(survivors), set(dropped)
        unknown = (surv | drop) - self._round.positions.keys()
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
        self._round.phase = "done"
        return UnmaskResponse(
            self.round_id,
            self.site_id,
            {j: b for j, (b, _) in self._held.items() if j in surv},
            {j: s for j, (_, s) in self._held.items() if j in drop},
        )
