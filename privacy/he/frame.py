"""The HE chunk frame: how a CKKS-encrypted vector travels, one chunk of values per frame.

Chunk frame (little-endian), one per `chunk_values` values of the flat update:

    magic b"FSHC" | u8 version=1 | u8 kind (1 contribution, 2 aggregate) | u16 contributors
    | 16 B key id | u64 total_values | u32 chunk_values | u32 chunk_index | u32 count
    | u32 n_parts | n_parts × (u32 length | TenSEAL CKKSVector serialization)

Each part holds one ciphertext of up to 4096 values (the last part of a chunk may be
shorter). Parts are TenSEAL's own protobuf/SEAL bytes; nothing is pickled. Sites write
them in SEAL's seeded form by default (`encrypt.py`); aggregates are full-size. Every
reader loads a part with the ordinary `CKKSVector` loader (`load_part`).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

import tenseal as ts

from .context import GLOBAL_SCALE, POLY_MODULUS_DEGREE, SLOTS, HEError

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

# The C++ class behind ts.CKKSVector: the Python wrapper converts every input twice
# (ndarray -> list -> PlainTensor -> list), ~10 % of the encryption time. tenseal is pinned.
NativeCKKSVector = ts._ts_cpp.CKKSVector


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
    check_layout(total_values, chunk_values)
    return -(-total_values // chunk_values)


def check_layout(total_values: int, chunk_values: int) -> None:
    """`HEError` unless a vector of `total_values` values may travel in chunks of `chunk_values`."""
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


def part_sizes(count: int) -> list[int]:
    """Values per ciphertext of a chunk of `count` values."""
    full, rest = divmod(count, SLOTS)
    return [SLOTS] * full + ([rest] if rest else [])


def pack_frame(header: ChunkHeader, parts: list[bytes]) -> bytes:
    """The frame of `header` and its serialized ciphertexts."""
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
        check_layout(total, chunk_values)
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


def unpack_frame(chunk: bytes) -> tuple[ChunkHeader, list[bytes]]:
    """A frame's checked header and its serialized ciphertexts; `HEError` if malformed."""
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


def load_part(ctx: ts.Context, blob: bytes, size: int) -> NativeCKKSVector:
    """Deserialize one ciphertext under `ctx` and check it is a fresh-shaped CKKS vector."""
    try:
        vec = NativeCKKSVector(ctx.data, blob)
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


def load_parts(ctx: ts.Context, header: ChunkHeader, parts: list[bytes]) -> list[NativeCKKSVector]:
    """`load_part` of every ciphertext of a frame."""
    return [
        load_part(ctx, blob, size) for blob, size in zip(parts, part_sizes(header.count), strict=True)
    ]
