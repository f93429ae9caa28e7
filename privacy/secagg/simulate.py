"""An in-process round with every site simulated: the reference wiring of the phases.

Used by the tests and the benchmark; the HTTP round engine does the same over the wire.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .client import SecAggClient
from .messages import EncryptedShare, KeyAdvert, MaskedInput, UnmaskRequest, UnmaskResponse
from .params import SecAggParams
from .server import SecAggServer


def simulate_round(
    params: SecAggParams,
    round_id: str,
    inputs: Mapping[str, np.ndarray],
    *,
    signing_keys: Mapping[str, Ed25519PrivateKey] | None = None,
    drop_before_advert: Collection[str] = (),
    drop_before_shares: Collection[str] = (),
    drop_before_masked: Collection[str] = (),
    drop_before_unmask: Collection[str] = (),
    wire: bool = True,
    precompute: Collection[str] = (),
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Run one round; return (uint32 sum of the survivors' inputs, survivors).

    `inputs` maps every site to its quantized uint32 vector. Sites in a drop_* set vanish
    just before that phase. With `wire`, every message goes through its JSON / bytes form.
    Sites in `precompute` expand their mask with precompute_mask() before masked_input().
    Raises what the parties raise (e.g. ThresholdError when too many drop).
    """
    sks = signing_keys or {s: Ed25519PrivateKey.generate() for s in params.sites}
    pks = {s: k.public_key() for s, k in sks.items()}
    clients = {s: SecAggClient(s, round_id, sks[s], pks, params) for s in params.sites}
    server = SecAggServer(round_id, params, pks)

    def rt(msg):  # the JSON round trip a message makes on the wire
        return type(msg).from_json(msg.to_json()) if wire else msg

    alive = [s for s in params.sites if s not in drop_before_advert]
    adverts = server.collect_adverts([rt(clients[s].advertise_keys()) for s in alive])
    adverts = [KeyAdvert.from_json(a.to_json()) if wire else a for a in adverts]

    alive = [s for s in alive if s not in drop_before_shares]
    routes = server.route_shares([[rt(m) for m in clients[s].share_keys(adverts)] for s in alive])

    alive = [s for s in alive if s not in drop_before_masked]
    for s in alive:
        shares: list[EncryptedShare] = [rt(m) for m in routes[s]]
        if s in precompute:
            clients[s].precompute_mask(shares)
            msg = clients[s].masked_input(inputs[s])
        else:
            msg = clients[s].masked_input(inputs[s], shares)
        server.add_masked_input(MaskedInput.from_bytes(msg.to_bytes()) if wire else msg)

    request: UnmaskRequest = rt(server.unmask_request())
    responses: list[UnmaskResponse] = [
        rt(clients[s].unmask(request.survivors, request.dropped))
        for s in request.survivors
        if s not in drop_before_unmask
    ]
    return server.finish(responses), server.survivors
