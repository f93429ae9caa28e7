"""What both parties of a SecAgg+ round track: `RoundState` (see the package docstring).

`SecAggClient` (`client.py`) and `SecAggServer` (`server.py`) each hold one.

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

from . import keys, shamir
from .errors import ProtocolError
from .params import MAX_ID, SecAggParams


def check_round(round_id: str, msg_round: str, what: str) -> None:
    """`ProtocolError` unless a message (`what`) of round `msg_round` belongs to `round_id`."""
    if msg_round != round_id:
        raise ProtocolError(f"{what} is for round {msg_round!r}, this is round {round_id!r}")


def commitment(round_id: str, site_id: str, b: int) -> bytes:
    """SHA-256 commitment to a site's self-mask seed b, sent with its masked input."""
    data = keys.encode_context(keys.DOMAIN, "b-commitment", round_id, site_id, shamir.encode(b))
    return hashlib.sha256(data).digest()


class RoundState:
    """One party's view of a round: its id, parameters and what follows from them (digest,
    Shamir x-coordinates, neighbour graph), and the phase the party is in."""

    def __init__(self, round_id: str, params: SecAggParams) -> None:
        if not isinstance(round_id, str) or not round_id or len(round_id) > MAX_ID:
            raise ValueError(f"round_id must be a non-empty string of <= {MAX_ID} chars")
        if not isinstance(params, SecAggParams):
            raise TypeError("params must be SecAggParams")
        self.round_id = round_id
        self.params = params
        self.digest = params.digest()
        self.positions = {s: i + 1 for i, s in enumerate(params.sites)}  # Shamir x-coordinates
        self.graph = params.graph(round_id)
        self.phase = ""

    def expect(self, *phases: str) -> None:
        """`ProtocolError` unless the party is in one of `phases`."""
        if self.phase not in phases:
            raise ProtocolError(
                f"message out of phase: expected {' or '.join(phases)}, "
                f"this party is in phase {self.phase!r}"
            )

    def mask_sign(self, own: str, peer: str) -> int:
        """+1 if `own` adds the pairwise mask shared with `peer`, -1 if it subtracts it."""
        return 1 if self.positions[own] < self.positions[peer] else -1
