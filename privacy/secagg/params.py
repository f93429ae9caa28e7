"""`SecAggParams`: the public parameters of one secure aggregation, identical at every party."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from . import keys
from .errors import ProtocolError
from .graph import degree, neighbour_graph
from .quantize import dequantize_sum, quantize

MAX_ID = 256  # longest site or round id, in characters


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
            if not isinstance(s, str) or not s or len(s) > MAX_ID:
                raise ValueError(f"site ids must be non-empty strings of <= {MAX_ID} chars")
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
