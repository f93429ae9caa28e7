"""Exchanged parameters: the trainable floating-point tensors of a policy, nothing else.

Only parameters with ``requires_grad`` and a floating dtype travel between nodes, keyed by
their ``named_parameters`` name and always in sorted-name order. Frozen weights, buffers
(step counters, masks) and normalization statistics never do: the statistics are aggregated
separately and live in the policy's pre/post-processors. Bytes are safetensors, never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor, nn

__all__ = [
    "apply_weights",
    "check_against_manifest",
    "load_safetensors",
    "manifest",
    "save_safetensors",
    "trainable_state",
]

_DTYPE_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}


def trainable_state(policy: nn.Module) -> dict[str, Tensor]:
    """Detached CPU copies of the trainable floating-point parameters, sorted by name."""
    params = {
        name: p for name, p in policy.named_parameters() if p.requires_grad and p.dtype.is_floating_point
    }
    return {name: params[name].detach().to("cpu", copy=True) for name in sorted(params)}


def manifest(state: Mapping[str, Tensor]) -> list[dict]:
    """``[{name, shape, dtype}]`` in sorted-name order; JSON-serialisable."""
    return [
        {"name": name, "shape": list(state[name].shape), "dtype": _dtype_name(state[name].dtype)}
        for name in sorted(state)
    ]


def check_against_manifest(state: Mapping[str, Tensor], manifest: list[dict]) -> None:
    """Raise ``ValueError`` unless ``state`` has exactly the manifest's names, shapes and
    dtypes and every value is finite."""
    if not isinstance(state, Mapping):
        raise ValueError(f"weights must be a mapping of name -> tensor, got {type(state).__name__}")
    expected = {m["name"]: m for m in manifest}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the manifest: missing {_head(missing)}, unexpected {_head(unexpected)}"
        )
    for name in sorted(expected):
        t, m = state[name], expected[name]
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
        if list(t.shape) != list(m["shape"]):
            raise ValueError(f"{name}: shape {list(t.shape)} != manifest shape {list(m['shape'])}")
        if _dtype_name(t.dtype) != m["dtype"]:
            raise ValueError(f"{name}: dtype {_dtype_name(t.dtype)} != manifest dtype {m['dtype']}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: contains NaN or infinite values")


def save_safetensors(state: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise ``state`` to safetensors bytes (contiguous CPU copies, sorted names).

    The manifest is stored in the header metadata under ``"manifest"`` (JSON)."""
    ordered = {name: state[name].detach().to("cpu").contiguous() for name in sorted(state)}
    meta = {"manifest": json.dumps(manifest(ordered))}
    meta.update(metadata or {})
    return _st_save(ordered, metadata=meta)


def load_safetensors(data: bytes, manifest: list[dict] | None = None) -> dict[str, Tensor]:
    """Parse safetensors bytes (no pickle); validate against ``manifest`` when given."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    try:
        loaded = _st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"not a valid safetensors payload: {exc}") from exc
    state = {name: loaded[name] for name in sorted(loaded)}
    if manifest is not None:
        check_against_manifest(state, manifest)
    return state


@torch.no_grad()
def apply_weights(policy: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Copy ``state`` into the policy's trainable parameters (validated first; in place)."""
    own = trainable_state(policy)
    check_against_manifest(state, manifest(own))
    params = dict(policy.named_parameters())
    for name in own:
        params[name].copy_(state[name].to(params[name].device))


def _dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _head(names: list[str], n: int = 5) -> str:
    if not names:
        return "none"
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more
