"""The SecAgg+ communication graph: each site pairs with k neighbours instead of all n-1.

Sites are placed on a ring in a pseudo-random order derived from a public seed (SHA-256 of
seed and site id, so every party computes the same graph) and each is joined to its
ceil(k/2) nearest sites on either side: a circulant (Harary-like) graph, regular of
degree min(2·ceil(k/2), n-1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def neighbour_graph(sites: Sequence[str], neighbours: int | None, seed: bytes) -> dict[str, frozenset[str]]:
    """Symmetric adjacency (site -> neighbours, self excluded); None = complete graph."""
    everyone = frozenset(sites)
    if neighbours is None or 2 * -(-neighbours // 2) >= len(sites) - 1:
        return {s: everyone - {s} for s in sites}
    half = -(-neighbours // 2)
    ring = sorted(sites, key=lambda s: (hashlib.sha256(seed + s.encode()).digest(), s))
    n = len(ring)
    return {
        s: frozenset(ring[(i + d) % n] for d in range(-half, half + 1) if d != 0) for i, s in enumerate(ring)
    }


def degree(n_sites: int, neighbours: int | None) -> int:
    """Number of neighbours of each site."""
    if neighbours is None:
        return n_sites - 1
    return min(2 * -(-neighbours // 2), n_sites - 1)
