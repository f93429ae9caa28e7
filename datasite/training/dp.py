"""DP-SGD with the episode (one demonstration) as the privacy unit.

Frames of one episode are strongly correlated, so protecting single frames says little about a
person's demonstration: an episode of F frames only gets F-fold *group* privacy from frame-level
DP. fedsilo therefore applies the sampled Gaussian mechanism to whole episodes:

1. **Poisson sampling of episodes**: every step, each allowed episode is picked independently
   with probability q; the batch size varies, and may be zero.
2. **K windows per sampled episode**: K frames (with their action chunks / observation
   windows, all inside the same episode) are drawn from each picked episode.
3. **Per-episode gradient**: the gradient of the mean of the K per-frame losses, computed
   from that episode's frames alone (one forward/backward per episode, or ``torch.func.vmap``
   over episodes on the unmodified policy; never a batch-normalised loss that mixes episodes).
4. **Clip** each per-episode gradient to L2 norm C; **sum**; add N(0, σ²C²) noise *once*
   per coordinate; **divide by the expected** number of episodes q·N (not the realised one,
   which would leak the batch size). Noise is added on empty steps too.
5. **Account** every step, empty or not: the site's ledger records
   ``Mechanism(noise_multiplier=σ, sample_rate=q, steps, unit="episode")`` and an RDP/PRV
   accountant composes the whole history.

Adding or removing one episode changes the clipped sum by at most C, so each step is a
sampled Gaussian mechanism with sensitivity C over episodes. Anything computed afterwards from
the noisy gradient alone (Adam moments, weight decay, the FedProx term μ(w − w_g), which
depends on no data) is post-processing and costs no privacy.

Frame-level DP (``unit="frame"``, K = 1, frames as units) is the same code with frames in
place of episodes. It is **weaker** and labelled so in results: it bounds the influence of one
frame, not of one demonstration.

**Where the randomness comes from.** The guarantee assumes that whoever sees an update cannot
predict the sampling or the noise. A PRNG with a small seed breaks that: ``torch.Generator``
takes at most 64 bits, so an observer of one site's update could search the seed space,
regenerate the noise and subtract it. Every draw the guarantee rests on (which units are
sampled, which frames of a sampled episode are used, the Gaussian noise) therefore comes from
:class:`privacy.csprng.Csprng`: AES-256-CTR keystream under a key of at least 128 bits (the
trainer uses 32 bytes), with one domain-separated stream per purpose (:func:`dp_streams`).
Normals are drawn in float64 on the CPU and moved to the parameter's device and dtype. The key
comes from OS entropy in production (``dp_seed=None`` in the trainer) or from the site's
full-length keyed hash of the round, so that a retried round repeats its noise instead of
releasing fresh noise; fixed keys are for tests. Randomness that no guarantee rests on (model
initialisation, dropout, augmentation) stays on torch's generators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from privacy.csprng import Csprng, KeyStream

__all__ = [
    "EPISODE",
    "FRAME",
    "FRAME_LEVEL_NOTE",
    "DpStreams",
    "NormHook",
    "dp_streams",
    "noisy_clipped_gradient",
    "sample_frames",
    "unit_sampler",
]

EPISODE = "episode"
FRAME = "frame"
FRAME_LEVEL_NOTE = (
    "frame-level DP: protects single frames only; an episode of F frames gets F-fold group "
    "privacy (much weaker than episode-level DP)"
)

NormHook = Callable[[Tensor, Tensor], None]
"""Called once per step with (per-unit norms before clipping, after clipping); tests/audits."""


class DpStreams(NamedTuple):
    """The independent CSPRNG streams of one DP training run."""

    units: KeyStream
    frames: KeyStream
    noise: KeyStream


def dp_streams(key: bytes) -> DpStreams:
    """Streams for Poisson sampling, frame choice and noise, keyed by ``key`` (≥ 16 bytes)."""
    rng = Csprng(key)
    return DpStreams(rng.stream("dp.units"), rng.stream("dp.frames"), rng.stream("dp.noise"))


def unit_sampler(num_units: int, sample_rate: float, steps: int, stream: KeyStream) -> Iterator[list[int]]:
    """Poisson sampling over unit ids 0..num_units-1: one (possibly empty) list per step."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    for _ in range(steps):
        yield np.flatnonzero(stream.bernoulli(sample_rate, num_units)).tolist()


def sample_frames(rows: Sequence[int], k: int, stream: KeyStream) -> list[int]:
    """K rows of one episode, uniformly without replacement (with replacement if it is shorter)."""
    n = len(rows)
    if n == 0:
        raise ValueError("episode has no frames")
    pick = stream.sample(n, k) if n >= k else stream.integers(n, k)
    return [rows[i] for i in pick.tolist()]


def noisy_clipped_gradient(
    policy: nn.Module,
    params: dict[str, Tensor],
    unit_batches: Sequence[dict[str, Any]],
    loss_fn: Callable[[nn.Module, dict[str, Any]], Tensor],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_units: float,
    noise: KeyStream,
    vmap_loss: Callable[[nn.Module, dict[str, Tensor], dict[str, Any]], Tensor] | None = None,
    norm_hook: NormHook | None = None,
) -> dict[str, Tensor]:
    """(Σ_u clip_C(∇ mean-loss(unit u)) + N(0, σ²C²)) / expected_units, per parameter.

    ``unit_batches`` holds one preprocessed batch per sampled unit (its K frames; may be
    empty). ``loss_fn(policy, batch)`` must be the mean of per-frame losses of that batch.
    With ``vmap_loss`` (equal K for all units) the per-unit gradients come from one
    ``torch.func.vmap(grad(...))`` call; otherwise one forward/backward per unit.
    ``noise`` draws the Gaussian noise (float64 normals, cast to each parameter's dtype), in
    a worker thread while the gradients are computed.
    """
    if clip_norm <= 0 or noise_multiplier < 0 or expected_units <= 0:
        raise ValueError("need clip_norm > 0, noise_multiplier >= 0 and expected_units > 0")
    names = list(params)
    tensors = [params[n] for n in names]
    std = noise_multiplier * clip_norm
    with ThreadPoolExecutor(max_workers=1) as pool:
        # the noise depends on no data: the CPU draws it while the gradients are computed
        drawing = pool.submit(_normals, noise, tensors) if std else None
        if unit_batches and vmap_loss is not None:
            acc, pre, post = _vmap_clipped_sum(
                policy, params, unit_batches, vmap_loss, clip_norm, norm_hook is not None
            )
        else:
            acc, pre, post = _loop_clipped_sum(
                policy, tensors, unit_batches, loss_fn, clip_norm, norm_hook is not None
            )
        normals = drawing.result() if drawing is not None else [None] * len(acc)
    if norm_hook is not None:
        norm_hook(pre.detach().cpu(), post.detach().cpu())
    out = {}
    for name, s, z in zip(names, acc, normals, strict=True):  # acc is fresh: update in place
        if z is not None:
            s.add_(torch.from_numpy(z).view(s.shape).to(device=s.device, dtype=s.dtype), alpha=std)
        out[name] = s.div_(expected_units)
    return out


def _normals(noise: KeyStream, tensors: list[Tensor]) -> list[np.ndarray]:
    """One array of standard normals per tensor, in order (float64 for float64 tensors)."""
    return [
        noise.standard_normal(t.numel(), np.float64 if t.dtype == torch.float64 else np.float32)
        for t in tensors
    ]


def _loop_clipped_sum(
    policy: nn.Module,
    tensors: list[Tensor],
    unit_batches: Sequence[dict[str, Any]],
    loss_fn: Callable[[nn.Module, dict[str, Any]], Tensor],
    clip_norm: float,
    record: bool,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """One forward/backward per unit; works for any K and any policy."""
    acc: list[Tensor] | None = None
    pre: list[Tensor] = []
    post: list[Tensor] = []
    fused = tensors[0].device.type == "cpu" and not record  # a host sync costs nothing on CPU
    for batch in unit_batches:
        loss = loss_fn(policy, batch)
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        gs = _owned(grads, tensors)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs)))
        if fused:  # scale-and-add in one pass
            factor = min(1.0, clip_norm / (float(norm) + 1e-6))
            if acc is None:
                torch._foreach_mul_(gs, factor)
                acc = gs
            else:
                torch._foreach_add_(acc, gs, alpha=factor)
            continue
        torch._foreach_mul_(gs, (clip_norm / (norm + 1e-6)).clamp(max=1.0))
        if record:  # measured on the clipped tensors, not inferred from the factor
            pre.append(norm.detach())
            post.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs))))
        if acc is None:
            acc = gs
        else:
            torch._foreach_add_(acc, gs)
    if acc is None:  # empty step: the sum is zero, the noise still comes
        acc = [torch.zeros_like(t) for t in tensors]
    empty = torch.zeros(0, device=tensors[0].device)
    return acc, torch.stack(pre) if pre else empty, torch.stack(post) if post else empty


def _vmap_clipped_sum(
    policy: nn.Module,
    params: dict[str, Tensor],
    unit_batches: Sequence[dict[str, Any]],
    vmap_loss: Callable[[nn.Module, dict[str, Tensor], dict[str, Any]], Tensor],
    clip_norm: float,
    record: bool,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """Per-unit gradients with ``vmap(grad(loss))`` over units (equal K required)."""
    from torch.func import grad, vmap

    k = _unit_size(unit_batches[0])
    keys = [key for key, v in unit_batches[0].items() if isinstance(v, Tensor) and _rows(v) == k]
    for b in unit_batches:
        if _unit_size(b) != k:
            raise ValueError("vmap over units needs the same number of frames in every unit")
    stacked = {key: torch.stack([b[key] for b in unit_batches]) for key in keys}
    detached = {n: p.detach() for n, p in params.items()}

    def unit_loss(p: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        return vmap_loss(policy, p, batch)

    g = vmap(grad(unit_loss), in_dims=(None, 0), randomness="different")(detached, stacked)
    names = list(params)
    norms = torch.stack([g[n].flatten(1).norm(dim=1) for n in names], 1).norm(dim=1)
    factor = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
    acc = [torch.einsum("e,e...->...", factor, g[n]) for n in names]
    post = norms.new_zeros(0)
    if record:  # measured on the clipped per-unit tensors, not inferred from the factor
        clipped = [g[n] * factor.view(-1, *([1] * (g[n].dim() - 1))) for n in names]
        post = torch.stack([c.flatten(1).norm(dim=1) for c in clipped], 1).norm(dim=1)
    return acc, norms, post


def _owned(grads: Sequence[Tensor | None], tensors: list[Tensor]) -> list[Tensor]:
    """Gradients safe to update in place: zeros for unused parameters, and a copy wherever
    autograd handed two parameters the same buffer (possible when a sum feeds both)."""
    out, seen = [], set()
    for g, t in zip(grads, tensors, strict=True):
        if g is None:
            g = torch.zeros_like(t)
        elif g.untyped_storage().data_ptr() in seen:
            g = g.clone()
        seen.add(g.untyped_storage().data_ptr())
        out.append(g)
    return out


def _rows(v: Tensor) -> int:
    return int(v.shape[0]) if v.dim() > 0 else -1


def _unit_size(batch: dict[str, Any]) -> int:
    for key in ("action", "observation.state"):
        if key in batch and isinstance(batch[key], Tensor):
            return _rows(batch[key])
    raise ValueError("cannot tell the number of frames of a unit batch (no action/state)")
