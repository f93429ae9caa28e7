"""Tensors at the orchestrator: safetensors bytes ↔ numpy, checked against a manifest.

Never pickle: safetensors only parses a JSON header and raw little-endian buffers.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

Arrays = dict[str, np.ndarray]
DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": None}


class TensorError(ValueError):
    """Tensors that do not match what the study expects; the message says what."""


def to_bytes(arrays: Arrays, metadata: dict[str, str] | None = None) -> bytes:
    return save({k: np.ascontiguousarray(v) for k, v in sorted(arrays.items())}, metadata=metadata)


def from_bytes(data: bytes) -> Arrays:
    try:
        return load(data)
    except (SafetensorError, ValueError, struct.error) as exc:
        raise TensorError(f"not a valid safetensors file: {exc}") from exc


def manifest_of(arrays: Arrays) -> list[dict]:
    """The study's parameter manifest: name, shape, dtype in a stable (sorted) order."""
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())]


def expected_bytes(manifest: list[dict]) -> int:
    """Size of a safetensors file holding exactly the manifest's tensors (plus its header)."""
    data = sum(int(np.prod(m["shape"], dtype=np.int64)) * np.dtype(m["dtype"]).itemsize for m in manifest)
    header = len(json.dumps(manifest)) * 2 + 1024
    return data + header


def check(arrays: Arrays, manifest: list[dict]) -> None:
    """Names, shapes and dtypes as in the manifest, and every value finite."""
    want = {m["name"]: m for m in manifest}
    missing, extra = sorted(set(want) - set(arrays)), sorted(set(arrays) - set(want))
    if missing or extra:
        raise TensorError(
            f"tensor names differ from the manifest (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, arr in arrays.items():
        m = want[name]
        if list(arr.shape) != list(m["shape"]):
            raise TensorError(f"{name}: shape {list(arr.shape)}, expected {m['shape']}")
        if str(arr.dtype) != m["dtype"]:
            raise TensorError(f"{name}: dtype {arr.dtype}, expected {m['dtype']}")
        if not np.isfinite(arr).all():
            raise TensorError(f"{name}: contains NaN or infinite values")
