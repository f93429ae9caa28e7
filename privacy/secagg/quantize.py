"""Fixed-point quantization of clipped updates into the ring Z_2^32, and back.

With n sites, each value is clipped to [-clip, clip] and mapped to an integer in
[0, 2^b - 1] with b = 32 - ceil(log2 n) - 1 bits, so the sum of up to n quantized inputs
stays below 2^31 and never wraps mod 2^32 (one spare bit of headroom).

Rounding is deterministic round-to-nearest (ties to even) by default: reproducible,
no randomness to manage, error <= step/2 per value. Pass `rng` (a numpy Generator) for
unbiased stochastic rounding (error < step per value). Arithmetic is float64 throughout,
because b exceeds float32's 24-bit mantissa. The input is processed in chunks to keep
the float64 temporaries in cache.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 16


def quantization_bits(n_sites: int) -> int:
    """b = 32 - ceil(log2 n) - 1."""
    if n_sites < 1:
        raise ValueError("n_sites must be >= 1")
    return 32 - (n_sites - 1).bit_length() - 1


def quantization_step(clip: float, n_sites: int) -> float:
    """Width of one quantization level: 2·clip / (2^b - 1)."""
    _check_clip(clip)
    return 2.0 * clip / float(2 ** quantization_bits(n_sites) - 1)


def quantize(x: np.ndarray, clip: float, n_sites: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Clip `x` to [-clip, clip] and map it to uint32 levels in [0, 2^b - 1] (same shape).

    Raises ValueError on NaN or infinite values.
    """
    _check_clip(clip)
    levels = 2 ** quantization_bits(n_sites) - 1
    scale = levels / (2.0 * clip)
    src = np.ascontiguousarray(x).reshape(-1)
    if not np.issubdtype(src.dtype, np.number) or np.iscomplexobj(src):
        raise ValueError("quantize expects a real numeric array")
    out = np.empty(src.shape[0], dtype=np.uint32)
    buf = np.empty(min(_CHUNK, src.shape[0]), dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, src.shape[0], _CHUNK):
            stop = min(src.shape[0], start + _CHUNK)
            b = buf[: stop - start]
            np.copyto(b, src[start:stop], casting="unsafe")
            # fast path: a finite sum proves all finite; else check exactly (huge values overflow)
            if not np.isfinite(b.sum()) and not np.isfinite(b).all():
                raise ValueError("quantize: input contains NaN or infinite values")
            np.clip(b, -clip, clip, out=b)
            b += clip
            b *= scale
            if rng is None:
                np.rint(b, out=b)
            else:
                b += rng.random(b.shape[0])
                np.floor(b, out=b)
                np.minimum(b, levels, out=b)
            np.copyto(out[start:stop], b, casting="unsafe")
    return out.reshape(np.shape(x))


def dequantize_sum(q_sum: np.ndarray, clip: float, n_sites: int, n_summed: int) -> np.ndarray:
    """Float64 estimate of the sum of `n_summed` clipped inputs from the sum of their levels."""
    if not 0 <= n_summed <= n_sites:
        raise ValueError("n_summed must be between 0 and n_sites")
    step = quantization_step(clip, n_sites)
    out = np.multiply(q_sum, step, dtype=np.float64)
    out -= n_summed * clip
    return out


def _check_clip(clip: float) -> None:
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError("clip must be a positive finite number")
