"""The orchestrator's side of `he`: validating and summing the sites' contribution frames.

Two forms. `CiphertextAccumulator` keeps one running ciphertext per 4096 values in memory
and adds each chunk as it arrives. A server that must survive restarts keeps each site's
chunks on disk instead (validated by `check_contribution`) and, once the round's
contributors are fixed, builds each aggregate frame with `sum_contributions` (or
`pool.sum_stored_contributions`). Both hold the public context only: they cannot decrypt.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator

import tenseal as ts

from .context import (
    KEY_ID_BYTES,
    MAX_ABS_VALUE,
    MAX_CONTRIBUTIONS,
    WRAP_BOUND,
    HEError,
    load_tenseal_context,
    public_context_bytes,
)
from .frame import (
    DEFAULT_CHUNK_VALUES,
    KIND_AGGREGATE,
    KIND_CONTRIBUTION,
    ChunkHeader,
    NativeCKKSVector,
    check_layout,
    load_parts,
    n_chunks,
    pack_frame,
    unpack_frame,
)


def _check_contribution_header(
    header: ChunkHeader, key_id: bytes, total_values: int, chunk_values: int, chunk_index: int
) -> None:
    if header.kind != KIND_CONTRIBUTION:
        raise HEError("expected a site's contribution, got an aggregate chunk")
    if header.key_id != key_id:
        raise HEError(
            f"chunk was encrypted under key {header.key_id.hex()}, "
            f"not this study's key {key_id.hex()}"
        )
    if (header.total_values, header.chunk_values) != (total_values, chunk_values):
        raise HEError(
            f"chunk is for a vector of {header.total_values} values in chunks of "
            f"{header.chunk_values}, expected {total_values} in chunks of {chunk_values}"
        )
    if header.chunk_index != chunk_index:
        raise HEError(f"chunk header says index {header.chunk_index}, expected {chunk_index}")


@functools.cache
def _public_tenseal_context() -> ts.Context:
    return load_tenseal_context(public_context_bytes())


def check_contribution(
    chunk: bytes, *, key_id: bytes, total_values: int, chunk_values: int, chunk_index: int
) -> ChunkHeader:
    """Fully validate one site's chunk without keeping it (the server's upload check).

    Parses the frame, checks it is a contribution for this key, vector layout and index,
    and loads every ciphertext under the public parameters; `HEError` on any failure.
    """
    header, parts = unpack_frame(chunk)
    _check_contribution_header(header, key_id, total_values, chunk_values, chunk_index)
    load_parts(_public_tenseal_context(), header, parts)
    return header


def sum_contributions(
    chunks: Iterable[bytes],
    *,
    key_id: bytes,
    total_values: int,
    chunk_values: int,
    chunk_index: int,
    max_contributions: int = MAX_CONTRIBUTIONS,
) -> bytes:
    """The aggregate frame of one chunk index: the sum of every site's contribution to it.

    The stateless form of `CiphertextAccumulator`, for a server that keeps each site's
    validated chunks on disk until the round's contributors are fixed and then sums chunk
    by chunk (memory: one chunk's running sum plus the chunk being added). At least two
    contributions (a single one would be a site's update) and at most `max_contributions`.
    """
    ctx = _public_tenseal_context()
    running: list[NativeCKKSVector] | None = None
    count = 0
    for chunk in chunks:
        header, parts = unpack_frame(chunk)
        _check_contribution_header(header, key_id, total_values, chunk_values, chunk_index)
        vecs = load_parts(ctx, header, parts)
        count += 1
        if count > max_contributions:
            raise HEError(f"more than {max_contributions} contributions to chunk {chunk_index}")
        if running is None:
            running = vecs
        else:
            for acc, vec in zip(running, vecs, strict=True):
                acc.add_(vec)
    if running is None or count < 2:
        raise HEError(f"an aggregate needs at least 2 contributions, got {count}")
    check_layout(total_values, chunk_values)
    size = min(chunk_values, total_values - chunk_index * chunk_values)
    header = ChunkHeader(
        KIND_AGGREGATE, count, key_id, total_values, chunk_values, chunk_index, size
    )
    return pack_frame(header, [vec.serialize() for vec in running])


class CiphertextAccumulator:
    """The orchestrator's running CKKS sum: one ciphertext per 4096 values, whatever n is.

    Each accepted chunk is added in place into the chunk's running sum and dropped, so
    memory is one model's worth of ciphertexts (≈ 32 bytes per value: 3.2 GB at 1e8
    parameters) plus the chunk being added, not n sites' worth. The price: a site's
    contribution cannot be taken out again, so `export` refuses while any site that sent
    a chunk has not sent all of them (ask it for `missing_chunks`, or restart the round).
    Holds only the public context (parameters, no key): it cannot decrypt anything.
    Thread-safe; after `export` it accepts no more chunks.
    """

    def __init__(
        self,
        public_ctx_bytes: bytes,
        total_values: int,
        *,
        key_id: bytes,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
        max_contributions: int = MAX_CONTRIBUTIONS,
    ) -> None:
        ctx = load_tenseal_context(public_ctx_bytes)
        if ctx.is_private():
            raise HEError("the aggregation server must hold only the public context, not the key")
        if bytes(public_ctx_bytes) != public_context_bytes():
            raise HEError("public context parameters differ from the fixed CKKS parameters")
        if not isinstance(key_id, bytes) or len(key_id) != KEY_ID_BYTES:
            raise HEError(f"key_id must be {KEY_ID_BYTES} bytes")
        self.n_chunks = n_chunks(total_values, chunk_values)
        if not isinstance(max_contributions, int) or not (
            max_contributions >= 1 and max_contributions * MAX_ABS_VALUE <= WRAP_BOUND / 2
        ):
            raise HEError(
                f"max_contributions must be in [1, {int(WRAP_BOUND / 2 / MAX_ABS_VALUE)}] "
                "so that sums cannot wrap"
            )
        self._ctx = ctx
        self.key_id = key_id
        self.total_values = total_values
        self.chunk_values = chunk_values
        self.max_contributions = max_contributions
        self._sums: list[list[NativeCKKSVector] | None] = [None] * self.n_chunks
        self._by_chunk: list[set[str]] = [set() for _ in range(self.n_chunks)]
        self._by_site: dict[str, set[int]] = {}
        self._closed = False
        self._lock = threading.Lock()

    @property
    def sites(self) -> frozenset[str]:
        """Sites that have sent at least one chunk."""
        with self._lock:
            return frozenset(self._by_site)

    def missing_chunks(self, site: str) -> list[int]:
        """Chunk indices not yet received from `site`."""
        with self._lock:
            got = self._by_site.get(site, set())
            return [i for i in range(self.n_chunks) if i not in got]

    def add(self, site: str, chunk_index: int, chunk: bytes) -> None:
        """Add one site's chunk into the running sum; `HEError` (and no change) if it is
        malformed, for another key/vector/index, a duplicate, or over the contribution cap.
        """
        if not isinstance(site, str) or not site:
            raise HEError("site must be a non-empty string")
        header, parts = unpack_frame(chunk)
        _check_contribution_header(
            header, self.key_id, self.total_values, self.chunk_values, chunk_index
        )
        self._check_accepts(site, chunk_index)  # cheap refusals before deserializing
        vecs = load_parts(self._ctx, header, parts)
        with self._lock:
            self._check_accepts(site, chunk_index, locked=True)
            seen = self._by_chunk[chunk_index]
            running = self._sums[chunk_index]
            if running is None:
                self._sums[chunk_index] = vecs
            else:
                for acc, vec in zip(running, vecs, strict=True):
                    acc.add_(vec)
            seen.add(site)
            self._by_site.setdefault(site, set()).add(chunk_index)

    def _check_accepts(self, site: str, chunk_index: int, *, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                return self._check_accepts(site, chunk_index, locked=True)
        if self._closed:
            raise HEError("the aggregate was already exported; no more chunks accepted")
        seen = self._by_chunk[chunk_index]
        if site in seen:
            raise HEError(f"duplicate chunk {chunk_index} from site {site!r}")
        if len(seen) >= self.max_contributions:
            raise HEError(f"chunk {chunk_index} already has {len(seen)} contributions")
        return None

    def export(self) -> Iterator[bytes]:
        """Close the accumulator and yield the aggregate chunks in index order.

        `HEError` (immediately) when nothing was added or a contributing site is missing
        chunks. Only these aggregate frames may ever be sent to a datasite.
        """
        with self._lock:
            if not self._by_site:
                raise HEError("nothing to export: no chunk was added")
            incomplete = {
                s: self.n_chunks - len(got)
                for s, got in sorted(self._by_site.items())
                if len(got) != self.n_chunks
            }
            if incomplete:
                raise HEError(
                    "sites have not sent every chunk (missing counts): "
                    f"{incomplete}; wait for them or restart the round without them"
                )
            self._closed = True
            contributors = len(self._by_site)
        return self._frames(contributors)

    def _frames(self, contributors: int) -> Iterator[bytes]:
        for index, running in enumerate(self._sums):
            assert running is not None
            count = min(self.chunk_values, self.total_values - index * self.chunk_values)
            header = ChunkHeader(
                KIND_AGGREGATE,
                contributors,
                self.key_id,
                self.total_values,
                self.chunk_values,
                index,
                count,
            )
            yield pack_frame(header, [vec.serialize() for vec in running])
