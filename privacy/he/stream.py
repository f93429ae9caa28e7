"""Chunked CKKS encryption (sites), accumulation (orchestrator) and decryption (a key holder).

Chunk frame (little-endian), one per `chunk_values` values of the flat update:

    magic b"FSHC" | u8 version=1 | u8 kind (1 contribution, 2 aggregate) | u16 contributors
    | 16 B key id | u64 total_values | u32 chunk_values | u32 chunk_index | u32 count
    | u32 n_parts | n_parts × (u32 length | TenSEAL CKKSVector serialization)

Each part holds one ciphertext of up to 4096 values (the last part of a chunk may be
shorter). Parts are TenSEAL's own protobuf/SEAL bytes; nothing is pickled.

Sites write their parts in SEAL's seeded form by default: a fresh symmetric ciphertext is
(c0, c1) with c1 uniformly random, so SEAL stores c1 as the 64-byte seed of its PRNG
(Blake2xb) and re-expands it on load; the part is half the size (≈ 16 B/value instead of
32). TenSEAL's Python API has no call for it, so `_SeededEncryptor` uses the SEAL binding
that ships with TenSEAL (`tenseal.sealapi`) and wraps SEAL's bytes in TenSEAL's
`CKKSVectorProto` exactly as `CKKSVector.serialize()` does; every reader loads them with
the ordinary `CKKSVector` loader. Sums (aggregate frames) are full-size ciphertexts.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import multiprocessing
import os
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from tenseal import sealapi

from .context import (
    GLOBAL_SCALE,
    KEY_ID_BYTES,
    MAX_ABS_VALUE,
    MAX_CONTRIBUTIONS,
    POLY_MODULUS_DEGREE,
    SLOTS,
    WRAP_BOUND,
    HEError,
    SecretContext,
    default_flood_std,
    load_tenseal_context,
    public_context_bytes,
)

MAGIC = b"FSHC"
VERSION = 1
KIND_CONTRIBUTION = 1
KIND_AGGREGATE = 2
DEFAULT_CHUNK_VALUES = 64 * SLOTS  # 262,144 values ≈ 4 MiB (seeded) / 8 MiB of ciphertext per frame
MAX_CHUNK_VALUES = 1024 * SLOTS  # ≈ 128 MiB frames
MAX_TOTAL_VALUES = 2**40

_HEADER = struct.Struct("<4sBBH16sQIIII")
_PART_LEN = struct.Struct("<I")
_MAX_PART_BYTES = 2 * (2 * POLY_MODULUS_DEGREE * 8)  # twice a fresh ciphertext's data
_FLOOD_LABEL = b"fedsilo/he/flood/v1\x00"

# The C++ class behind ts.CKKSVector: the Python wrapper converts every input twice
# (ndarray -> list -> PlainTensor -> list), ~10 % of the encryption time. tenseal is pinned.
_CKKSVector = ts._ts_cpp.CKKSVector


@dataclass(frozen=True)
class ChunkHeader:
    """The clear-text header of a chunk frame (see module doc)."""

    kind: int
    contributors: int
    key_id: bytes
    total_values: int
    chunk_values: int
    chunk_index: int
    count: int

    @property
    def offset(self) -> int:
        """Index of the chunk's first value in the flat vector."""
        return self.chunk_index * self.chunk_values

    @property
    def n_parts(self) -> int:
        """Number of ciphertexts in the chunk."""
        return -(-self.count // SLOTS)


def n_chunks(total_values: int, chunk_values: int = DEFAULT_CHUNK_VALUES) -> int:
    """How many chunks a vector of `total_values` values is cut into."""
    _check_layout(total_values, chunk_values)
    return -(-total_values // chunk_values)


def _check_layout(total_values: int, chunk_values: int) -> None:
    if not isinstance(total_values, int) or not 1 <= total_values <= MAX_TOTAL_VALUES:
        raise HEError(f"total_values must be an int in [1, 2^40], got {total_values!r}")
    if (
        not isinstance(chunk_values, int)
        or not SLOTS <= chunk_values <= MAX_CHUNK_VALUES
        or chunk_values % SLOTS
    ):
        raise HEError(
            f"chunk_values must be a multiple of {SLOTS} in [{SLOTS}, {MAX_CHUNK_VALUES}], "
            f"got {chunk_values!r}"
        )


def _part_sizes(count: int) -> list[int]:
    full, rest = divmod(count, SLOTS)
    return [SLOTS] * full + ([rest] if rest else [])


def _pack(header: ChunkHeader, parts: list[bytes]) -> bytes:
    head = _HEADER.pack(
        MAGIC,
        VERSION,
        header.kind,
        header.contributors,
        header.key_id,
        header.total_values,
        header.chunk_values,
        header.chunk_index,
        header.count,
        len(parts),
    )
    lengths = (_PART_LEN.pack(len(p)) for p in parts)
    return b"".join(itertools.chain((head,), *zip(lengths, parts, strict=True)))


def read_chunk_header(chunk: bytes) -> ChunkHeader:
    """Parse and check a frame's header (not its ciphertexts); `HEError` if malformed."""
    if not isinstance(chunk, bytes | bytearray | memoryview) or len(chunk) < _HEADER.size:
        raise HEError("malformed chunk: too short for a header")
    magic, version, kind, contributors, key_id, total, chunk_values, index, count, n_parts = (
        _HEADER.unpack_from(chunk)
    )
    if magic != MAGIC or version != VERSION:
        raise HEError("malformed chunk: not a fedsilo HE chunk (bad magic or version)")
    if kind not in (KIND_CONTRIBUTION, KIND_AGGREGATE):
        raise HEError(f"malformed chunk: unknown kind {kind}")
    if contributors < 1 or (kind == KIND_CONTRIBUTION and contributors != 1):
        raise HEError(f"malformed chunk: {contributors} contributors for kind {kind}")
    try:
        _check_layout(total, chunk_values)
    except HEError as exc:
        raise HEError(f"malformed chunk: {exc}") from exc
    chunks = -(-total // chunk_values)
    if index >= chunks:
        raise HEError(f"malformed chunk: index {index} out of range (vector has {chunks} chunks)")
    expected = min(chunk_values, total - index * chunk_values)
    if count != expected:
        raise HEError(f"malformed chunk: chunk {index} holds {count} values, expected {expected}")
    header = ChunkHeader(kind, contributors, bytes(key_id), total, chunk_values, index, count)
    if n_parts != header.n_parts:
        raise HEError(f"malformed chunk: {n_parts} ciphertexts, expected {header.n_parts}")
    return header


def _unpack(chunk: bytes) -> tuple[ChunkHeader, list[bytes]]:
    header = read_chunk_header(chunk)
    data = bytes(chunk)
    parts, pos = [], _HEADER.size
    for _ in range(header.n_parts):
        if pos + _PART_LEN.size > len(data):
            raise HEError("malformed chunk: truncated")
        (length,) = _PART_LEN.unpack_from(data, pos)
        pos += _PART_LEN.size
        if length > _MAX_PART_BYTES or pos + length > len(data):
            raise HEError("malformed chunk: bad ciphertext length")
        parts.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise HEError("malformed chunk: trailing bytes")
    return header, parts


def _load_part(ctx: ts.Context, blob: bytes, size: int) -> _CKKSVector:
    """Deserialize one ciphertext under `ctx` and check it is a fresh-shaped CKKS vector."""
    try:
        vec = _CKKSVector(ctx.data, blob)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEError(
            f"chunk ciphertext does not load under these CKKS parameters: {exc}"
        ) from exc
    if vec.size() != size:
        raise HEError(f"chunk ciphertext holds {vec.size()} values, expected {size}")
    cts = vec.ciphertext()
    if len(cts) != 1:
        raise HEError(f"chunk part holds {len(cts)} ciphertexts, expected 1")
    ct = cts[0]
    if ct.size() != 2 or ct.scale != GLOBAL_SCALE or not ct.is_ntt_form() or ct.is_transparent():
        raise HEError("chunk ciphertext is not a size-2, scale-2^40 CKKS ciphertext")
    return vec


def _load_parts(ctx: ts.Context, header: ChunkHeader, parts: list[bytes]) -> list[_CKKSVector]:
    return [
        _load_part(ctx, blob, size)
        for blob, size in zip(parts, _part_sizes(header.count), strict=True)
    ]


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
    header, parts = _unpack(chunk)
    _check_contribution_header(header, key_id, total_values, chunk_values, chunk_index)
    _load_parts(_public_tenseal_context(), header, parts)
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
    running: list[_CKKSVector] | None = None
    count = 0
    for chunk in chunks:
        header, parts = _unpack(chunk)
        _check_contribution_header(header, key_id, total_values, chunk_values, chunk_index)
        vecs = _load_parts(ctx, header, parts)
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
    _check_layout(total_values, chunk_values)
    size = min(chunk_values, total_values - chunk_index * chunk_values)
    header = ChunkHeader(
        KIND_AGGREGATE, count, key_id, total_values, chunk_values, chunk_index, size
    )
    return _pack(header, [vec.serialize() for vec in running])


def _checked_block(block: np.ndarray, start: int) -> np.ndarray:
    finite = np.isfinite(block)
    if not finite.all():
        raise HEError(f"non-finite value at index {start + int(np.argmin(finite))}")
    peak = float(np.max(np.abs(block)))
    if peak > MAX_ABS_VALUE:
        where = start + int(np.argmax(np.abs(block)))
        raise HEError(
            f"pre-weighted value {peak:.6g} at index {where} exceeds the safe bound "
            f"{MAX_ABS_VALUE:g} (sums wrap silently at {WRAP_BOUND:g}); clip or rescale"
        )
    return block


def _weighted_block(arr: np.ndarray, start: int, chunk_values: int, weight: float) -> np.ndarray:
    block = np.asarray(arr[start : start + chunk_values], dtype=np.float64) * weight
    return _checked_block(block, start)


def encrypt_stream(
    ctx: SecretContext,
    vector: np.ndarray,
    *,
    weight: float,
    chunk_values: int = DEFAULT_CHUNK_VALUES,
    chunk_indices: Iterable[int] | None = None,
    workers: int = 1,
    seeded: bool = True,
) -> Iterator[bytes]:
    """Encrypt `weight · vector` chunk by chunk; yields one frame per chunk, in order.

    `weight` is the site's normalized aggregation weight in (0, 1]. The whole vector is
    checked before anything is encrypted (1-D, finite, |weight·x| <= MAX_ABS_VALUE), so
    errors raise here rather than mid-upload. `chunk_indices` encrypts only those chunks
    (to resume an interrupted upload). Memory: one chunk of plaintext and ciphertext at a
    time, or 2 × `workers` chunks in flight.

    `workers` > 1 encrypts chunks in that many worker processes (SEAL holds the GIL, so
    threads would not help; workers come from a fork server or spawn, never a fork of a
    threaded caller); each loads the secret context once, frames still come in index
    order. Starting the pool costs ~0.2-0.3 s, so it pays off from ~5 chunks per worker
    (2 workers: 1.5x faster at 1e7 values, slower at 1e6); a daemonic process encrypts
    in-process instead. `seeded` (default) writes SEAL's seeded ciphertexts, ≈ 16 B/value
    instead of 32 (see the module doc); the server's load re-expands the seed (~35 ns per
    value on a 2-core VM).
    """
    if not isinstance(ctx, SecretContext):
        raise HEError("encrypt_stream needs the SecretContext of a key-holding datasite")
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "fiu":
        raise HEError("vector must be a non-empty 1-D array of real numbers")
    try:
        w = float(weight)
    except (TypeError, ValueError) as exc:
        raise HEError("weight must be a number") from exc
    if not (math.isfinite(w) and 0.0 < w <= 1.0):
        raise HEError(f"weight must be the site's normalized weight in (0, 1], got {weight!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise HEError(f"workers must be an int >= 1, got {workers!r}")
    if not isinstance(seeded, bool):
        raise HEError("seeded must be a bool")
    total = int(arr.size)
    chunks = n_chunks(total, chunk_values)
    if chunk_indices is None:
        indices = list(range(chunks))
    else:
        indices = sorted(set(chunk_indices))
        if any(not isinstance(i, int) or not 0 <= i < chunks for i in indices):
            raise HEError(f"chunk_indices must be ints in [0, {chunks})")
    for start in range(0, total, chunk_values):
        _weighted_block(arr, start, chunk_values, w)
    if _can_start_pool(workers, len(indices)):
        return _encrypt_chunks_in_pool(ctx, arr, w, chunk_values, indices, workers, seeded)
    return _encrypt_chunks(ctx, arr, w, chunk_values, indices, seeded)


_SEAL_MAGIC = b"\x5e\xa1"  # SEALHeader.magic 0xA15E, little-endian
_SEAL_HEADER = struct.Struct("<2sBBBBHQ")  # magic, header size, major, minor, compression, reserved, size


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class _SaveBuffer:
    """Where SEAL objects are serialized: the SEAL binding only saves to a file path, so an
    anonymous in-memory file (Linux memfd), else a private temporary file, is reused."""

    def __init__(self) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        fd: int | None = None
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("fedsilo-he", os.MFD_CLOEXEC)
            path = f"/proc/self/fd/{fd}"
            if not os.path.exists(path):  # no /proc mounted
                os.close(fd)
                fd = None
        if fd is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fedsilo-he-")
            path = os.path.join(self._tmpdir.name, "ciphertext")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._fd: int | None = fd
        self._path = path

    def save(self, obj: _Saveable) -> bytes:
        assert self._fd is not None, "buffer closed"
        obj.save(self._path)
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0)
        if len(data) < _SEAL_HEADER.size:
            raise HEError("SEAL did not serialize the ciphertext")
        magic, header_size, *_, stated = _SEAL_HEADER.unpack_from(data)
        if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or stated != len(data):
            raise HEError("SEAL did not serialize the ciphertext")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_PROTO_SCALE = b"\x19" + struct.pack("<d", GLOBAL_SCALE)  # field 3 (double scale)


def _ckks_vector_blob(size: int, seal_ciphertext: bytes) -> bytes:
    """One SEAL ciphertext as TenSEAL's `CKKSVectorProto`, as `CKKSVector.serialize()` writes
    it: field 1 `sizes` (packed uint32), field 2 `ciphertexts` (bytes), field 3 `scale`."""
    sizes = _varint(size)
    head = b"\x0a" + _varint(len(sizes)) + sizes + b"\x12" + _varint(len(seal_ciphertext))
    return b"".join((head, seal_ciphertext, _PROTO_SCALE))


class _SeededEncryptor:
    """Encrypts up to 4096 values into one part in SEAL's seeded form (see module doc)."""

    def __init__(self, ctx: SecretContext) -> None:
        data = ctx.context.data
        seal_ctx = data.seal_context()
        self._encoder = sealapi.CKKSEncoder(seal_ctx)
        self._encryptor = sealapi.Encryptor(seal_ctx, data.secret_key())
        self._plain = sealapi.Plaintext()
        self._buffer = _SaveBuffer()

    def __call__(self, values: list[float]) -> bytes:
        size = len(values)
        if size < SLOTS:  # fill the slots cyclically, as TenSEAL's CKKSVector does
            values = (values * -(-SLOTS // size))[:SLOTS]
        self._encoder.encode(values, GLOBAL_SCALE, self._plain)
        return _ckks_vector_blob(size, self._buffer.save(self._encryptor.encrypt_symmetric(self._plain)))

    def close(self) -> None:
        self._buffer.close()


class _TenSEALEncryptor:
    """Encrypts up to 4096 values into one full-size part with TenSEAL's CKKSVector."""

    def __init__(self, ctx: SecretContext) -> None:
        self._tctx = ctx.context.data

    def __call__(self, values: list[float]) -> bytes:
        return _CKKSVector(self._tctx, values).serialize()

    def close(self) -> None:
        pass


def _part_encryptor(ctx: SecretContext, seeded: bool) -> _SeededEncryptor | _TenSEALEncryptor:
    return _SeededEncryptor(ctx) if seeded else _TenSEALEncryptor(ctx)


def _encrypt_block(
    ctx: SecretContext,
    encrypt_part: Callable[[list[float]], bytes],
    block: np.ndarray,
    total: int,
    chunk_values: int,
    index: int,
) -> bytes:
    values = block.tolist()  # one conversion per chunk; the parts are list slices
    parts = [encrypt_part(values[i : i + SLOTS]) for i in range(0, len(values), SLOTS)]
    header = ChunkHeader(KIND_CONTRIBUTION, 1, ctx.key_id, total, chunk_values, index, len(values))
    return _pack(header, parts)


def _encrypt_chunks(
    ctx: SecretContext,
    arr: np.ndarray,
    weight: float,
    chunk_values: int,
    indices: list[int],
    seeded: bool,
) -> Iterator[bytes]:
    encrypt_part = _part_encryptor(ctx, seeded)
    try:
        for index in indices:
            block = _weighted_block(arr, index * chunk_values, chunk_values, weight)
            yield _encrypt_block(ctx, encrypt_part, block, int(arr.size), chunk_values, index)
    finally:
        encrypt_part.close()


# One per worker process of `_encrypt_chunks_in_pool`, set by its initializer.
_worker_state: tuple[SecretContext, _SeededEncryptor | _TenSEALEncryptor] | None = None


def _init_worker(secret_data: bytes, seeded: bool) -> None:
    global _worker_state
    ctx = SecretContext(secret_data)
    _worker_state = (ctx, _part_encryptor(ctx, seeded))


def _encrypt_in_worker(
    raw: np.ndarray, start: int, weight: float, total: int, chunk_values: int
) -> bytes:
    assert _worker_state is not None, "worker not initialized"
    ctx, encrypt_part = _worker_state
    # the worker weights and checks the copy it got, so it encrypts exactly what it checked
    block = _checked_block(np.asarray(raw, dtype=np.float64) * weight, start)
    return _encrypt_block(ctx, encrypt_part, block, total, chunk_values, start // chunk_values)


def _pool_context() -> multiprocessing.context.BaseContext:
    # never fork: the caller may run threads (a web server, TenSEAL's pool)
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _can_start_pool(workers: int, tasks: int) -> bool:
    # a daemonic process (e.g. a multiprocessing pool's worker) may not start processes
    return workers > 1 and tasks > 1 and not multiprocessing.current_process().daemon


def _ordered_in_pool(
    fn: Callable[..., bytes],
    tasks: Iterator[tuple],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[bytes]:
    """`fn(*task)` for each task in `workers` processes; results in task order. Tasks are
    drawn lazily, at most 2 x `workers` in flight, so memory stays bounded."""
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(), initializer=initializer, initargs=initargs
    )
    pending: deque[Future[bytes]] = deque()

    def submit() -> None:
        task = next(tasks, None)
        if task is not None:
            pending.append(pool.submit(fn, *task))

    try:
        for _ in range(2 * workers):
            submit()
        while pending:
            result = pending.popleft().result()
            submit()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _encrypt_chunks_in_pool(
    ctx: SecretContext,
    arr: np.ndarray,
    weight: float,
    chunk_values: int,
    indices: list[int],
    workers: int,
    seeded: bool,
) -> Iterator[bytes]:
    total = int(arr.size)

    def tasks() -> Iterator[tuple]:
        for index in indices:
            start = index * chunk_values
            raw = np.array(arr[start : start + chunk_values])  # a snapshot, sent to the worker
            yield raw, start, weight, total, chunk_values

    workers = min(workers, len(indices))
    return _ordered_in_pool(_encrypt_in_worker, tasks(), workers, _init_worker, (ctx.data, seeded))


def sum_stored_contributions(
    chunk_files: Sequence[Sequence[str | os.PathLike]],
    *,
    key_id: bytes,
    total_values: int,
    chunk_values: int,
    max_contributions: int = MAX_CONTRIBUTIONS,
    workers: int = 1,
) -> Iterator[bytes]:
    """`sum_contributions` of every chunk index, from files: `chunk_files[i]` names the
    stored contributions to chunk i. Yields the aggregate frames in index order.

    Chunks are independent, so `workers` > 1 sums them in that many processes, each
    reading its chunk's files itself (the frames never cross a pipe; only aggregates come
    back); SEAL holds the GIL, so threads would not help. Memory: one chunk's running sum
    and the chunk being added, per worker.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise HEError(f"workers must be an int >= 1, got {workers!r}")
    if len(chunk_files) != n_chunks(total_values, chunk_values):
        raise HEError(f"expected the files of {n_chunks(total_values, chunk_values)} chunks")
    layout = (key_id, total_values, chunk_values, max_contributions)
    tasks = ((tuple(map(os.fspath, files)), index, *layout) for index, files in enumerate(chunk_files))
    if _can_start_pool(workers, len(chunk_files)):
        return _ordered_in_pool(_sum_files, tasks, min(workers, len(chunk_files)))
    return (_sum_files(*task) for task in tasks)


def _sum_files(
    paths: tuple[str, ...],
    chunk_index: int,
    key_id: bytes,
    total_values: int,
    chunk_values: int,
    max_contributions: int,
) -> bytes:
    def frames() -> Iterator[bytes]:
        for path in paths:
            with open(path, "rb") as fh:
                yield fh.read()

    return sum_contributions(
        frames(),
        key_id=key_id,
        total_values=total_values,
        chunk_values=chunk_values,
        chunk_index=chunk_index,
        max_contributions=max_contributions,
    )


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
        self._sums: list[list[_CKKSVector] | None] = [None] * self.n_chunks
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
        header, parts = _unpack(chunk)
        _check_contribution_header(
            header, self.key_id, self.total_values, self.chunk_values, chunk_index
        )
        self._check_accepts(site, chunk_index)  # cheap refusals before deserializing
        vecs = _load_parts(self._ctx, header, parts)
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
            yield _pack(header, [vec.serialize() for vec in running])


def _gaussian(key: bytes, n: int) -> np.ndarray:
    """n standard normal values from AES-256-CTR(key) via Box-Muller (deterministic in key)."""
    pairs = (n + 1) // 2
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(16 * pairs))
    u = ((np.frombuffer(stream, dtype="<u8") >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(u[0::2]))
    angle = 2.0 * np.pi * u[1::2]
    out = np.empty(2 * pairs)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    return out[:n]


def decrypt_stream(
    secret_ctx: SecretContext | bytes,
    chunks: Iterable[bytes],
    total: int,
    *,
    flood_std: float | None = None,
    min_contributors: int = 2,
) -> np.ndarray:
    """Decrypt aggregate chunks (any order, each exactly once) into a float64 vector.

    Refuses single-site contributions and aggregates of fewer than `min_contributors`
    sites as reported by the header (a guard against mistakes; the orchestrator writes
    the header). Adds Gaussian noise of std `flood_std` (default `default_flood_std()`,
    ≈ 5.3e-9; 0 disables) before returning: see "Decryption leaks" in `privacy.he`. The
    noise is derived from the secret key and the frame, so decrypting the same aggregate
    again gives the same result; still, decrypt one aggregate per round only.
    """
    secret = secret_ctx if isinstance(secret_ctx, SecretContext) else SecretContext(secret_ctx)
    if not isinstance(total, int) or not 1 <= total <= MAX_TOTAL_VALUES:
        raise HEError(f"total must be an int in [1, 2^40], got {total!r}")
    sigma = default_flood_std() if flood_std is None else float(flood_std)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise HEError("flood_std must be a finite number >= 0")
    if not isinstance(min_contributors, int) or min_contributors < 1:
        raise HEError("min_contributors must be an int >= 1")
    out = np.empty(total, dtype=np.float64)
    seen: set[int] = set()
    layout: tuple[int, int] | None = None
    for frame in chunks:
        header, parts = _unpack(frame)
        if header.kind != KIND_AGGREGATE:
            raise HEError("refusing to decrypt a single site's contribution; only aggregates")
        if header.key_id != secret.key_id:
            raise HEError(
                f"chunk was encrypted under key {header.key_id.hex()}, "
                f"not this context's key {secret.key_id.hex()}"
            )
        if header.total_values != total:
            raise HEError(f"chunk is for {header.total_values} values, expected {total}")
        if header.contributors < min_contributors:
            raise HEError(
                f"aggregate of {header.contributors} site(s), fewer than {min_contributors}"
            )
        if layout is None:
            layout = (header.chunk_values, header.contributors)
        elif layout != (header.chunk_values, header.contributors):
            raise HEError("chunks disagree on chunk size or number of contributors")
        if header.chunk_index in seen:
            raise HEError(f"duplicate aggregate chunk {header.chunk_index}")
        values = np.concatenate(
            [
                np.asarray(_load_part(secret.context, blob, size).decrypt(), dtype=np.float64)
                for blob, size in zip(parts, _part_sizes(header.count), strict=True)
            ]
        )
        if sigma > 0:
            key = secret.prf(_FLOOD_LABEL + hashlib.sha256(frame).digest())
            values += sigma * _gaussian(key, values.size)
        out[header.offset : header.offset + header.count] = values
        seen.add(header.chunk_index)
    expected = n_chunks(total, layout[0]) if layout else None
    if expected is None or len(seen) != expected:
        missing = "all" if expected is None else expected - len(seen)
        raise HEError(f"aggregate incomplete: {missing} chunk(s) missing")
    return out
