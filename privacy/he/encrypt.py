"""Chunked CKKS encryption at a site: `encrypt_stream`, in-process or in worker processes.

Sites write their parts in SEAL's seeded form by default: a fresh symmetric ciphertext is
(c0, c1) with c1 uniformly random, so SEAL stores c1 as the 64-byte seed of its PRNG
(Blake2xb) and re-expands it on load; the part is half the size (≈ 16 B/value instead of
32). TenSEAL's Python API has no call for it, so `_SeededEncryptor` uses the SEAL binding
that ships with TenSEAL (`tenseal.sealapi`) and wraps SEAL's bytes in TenSEAL's
`CKKSVectorProto` exactly as `CKKSVector.serialize()` does (`ckks_vector_blob`); every
reader loads them with the ordinary `CKKSVector` loader. Sums (aggregate frames) are
full-size ciphertexts.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np
from tenseal import sealapi

from .context import GLOBAL_SCALE, MAX_ABS_VALUE, SLOTS, WRAP_BOUND, HEError, SecretContext
from .frame import (
    DEFAULT_CHUNK_VALUES,
    KIND_CONTRIBUTION,
    ChunkHeader,
    NativeCKKSVector,
    n_chunks,
    pack_frame,
)
from .pool import can_start_pool, ordered_in_pool


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
    if can_start_pool(workers, len(indices)):
        return _encrypt_chunks_in_pool(ctx, arr, w, chunk_values, indices, workers, seeded)
    return _encrypt_chunks(ctx, arr, w, chunk_values, indices, seeded)


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


_SEAL_MAGIC = b"\x5e\xa1"  # SEALHeader.magic 0xA15E, little-endian
_SEAL_HEADER = struct.Struct("<2sBBBBHQ")  # magic, header size, major, minor, compression, reserved, size


class _Saveable(Protocol):
    def save(self, path: str) -> None: ...


class SaveBuffer:
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
        """SEAL's serialization of `obj`, checked against its SEAL header."""
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


def ckks_vector_blob(size: int, seal_ciphertext: bytes) -> bytes:
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
        self._buffer = SaveBuffer()

    def __call__(self, values: list[float]) -> bytes:
        size = len(values)
        if size < SLOTS:  # fill the slots cyclically, as TenSEAL's CKKSVector does
            values = (values * -(-SLOTS // size))[:SLOTS]
        self._encoder.encode(values, GLOBAL_SCALE, self._plain)
        return ckks_vector_blob(size, self._buffer.save(self._encryptor.encrypt_symmetric(self._plain)))

    def close(self) -> None:
        self._buffer.close()


class _TenSEALEncryptor:
    """Encrypts up to 4096 values into one full-size part with TenSEAL's CKKSVector."""

    def __init__(self, ctx: SecretContext) -> None:
        self._tctx = ctx.context.data

    def __call__(self, values: list[float]) -> bytes:
        return NativeCKKSVector(self._tctx, values).serialize()

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
    return pack_frame(header, parts)


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
    return ordered_in_pool(_encrypt_in_worker, tasks(), workers, _init_worker, (ctx.data, seeded))
