"""Cost of episode-level DP-SGD over a non-DP step for ``act-small`` (goal: ≤ 1.5×).

For each shape E episodes × K frames, a non-DP step on the same E·K frames (one batched
forward/backward + AdamW) is compared with a DP step (per-episode gradient of the mean K-frame
loss, clip, sum, Gaussian noise, AdamW) computed by the trainer's own code
(:func:`datasite.training.dp.noisy_clipped_gradient`), by a loop over episodes and by
``torch.func.vmap`` over episodes. Steps of all modes are interleaved round-robin and medians
are reported, so that load from other processes hits every mode alike. Inputs are synthetic
preprocessed batches: model compute only (Poisson sampling and data loading excluded).

    .venv/bin/python benchmarks/dp_overhead.py                    # 96x128 images
    .venv/bin/python benchmarks/dp_overhead.py --freeze-backbone  # also with a frozen ResNet
    .venv/bin/python benchmarks/dp_overhead.py --shapes 2x4 --steps 5 --image-size 32 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL = 1.5


def measure(args: argparse.Namespace, e: int, k: int, frozen: bool) -> dict[str, float]:
    """Median seconds per step for non-DP, DP loop and DP vmap at E episodes x K frames."""
    import torch
    from train_step import synthetic_stats

    from datasite.datagen import so100_features
    from datasite.training import dp
    from datasite.training.recipes import build_policy, synthetic_batch

    features = so100_features(image_size=tuple(args.image_size))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = {"freeze_backbone": frozen}
    bundle = build_policy("act-small", cfg, features, synthetic_stats(), device=device)
    policy = bundle.policy
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-5)
    pre = bundle.preprocessor
    batch = pre(synthetic_batch(bundle, features, e * k))
    units = [pre(synthetic_batch(bundle, features, k, seed=i + 1)) for i in range(e)]
    noise = dp.dp_streams(bytes(32)).noise  # a fixed key: benchmark only

    def plain() -> None:
        loss = bundle.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def private(vmap: bool) -> None:
        grads = dp.noisy_clipped_gradient(
            policy,
            params,
            units,
            bundle.loss_fn,
            clip_norm=1.0,
            noise_multiplier=1.0,
            expected_units=e,
            noise=noise,
            vmap_loss=bundle.vmap_loss if vmap else None,
        )
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()
        opt.zero_grad(set_to_none=True)

    modes = {"non-DP": plain, "DP loop": lambda: private(False), "DP vmap": lambda: private(True)}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(args.warmup + args.steps):
        for name, step in modes.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {
        "device": device.type,
        **{m: statistics.median(t) for m, t in times.items()},
        **{f"best {m}": min(t) for m, t in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="2x4,4x2,8x4", help="ExK list: episodes x frames")
    ap.add_argument("--image-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--freeze-backbone", action="store_true", help="also measure a frozen ResNet")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a busy box)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
    variants = [False, True] if args.freeze_backbone else [False]
    print(
        f"act-small, {args.image_size[0]}x{args.image_size[1]} images, torch threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs; medians of {args.steps} interleaved steps"
    )
    print(
        f"{'shape':>6} {'backbone':>8} {'dev':>4} {'non-DP s':>9} {'loop s':>7} {'x':>6} "
        f"{'vmap s':>7} {'x':>6} | {'best-of ratios: loop':>20} {'vmap':>6}"
    )
    best = float("inf")
    verdicts: list[str] = []
    for frozen in variants:
        for e, k in shapes:
            r = measure(args, e, k, frozen)
            lx, vx = r["DP loop"] / r["non-DP"], r["DP vmap"] / r["non-DP"]
            blx = r["best DP loop"] / r["best non-DP"]
            bvx = r["best DP vmap"] / r["best non-DP"]
            best = min(best, lx, vx) if not frozen else best
            x, mode = min((lx, "loop"), (vx, "vmap"))
            state = "meets" if x <= GOAL else "misses"
            backbone = "frozen" if frozen else "trained"
            verdicts.append(f"  {e}x{k} {backbone}: {x:.2f}x ({mode}) {state} the goal")
            print(
                f"{e:>3}x{k:<2} {'frozen' if frozen else 'trained':>8} {r['device']:>4} "
                f"{r['non-DP']:>9.3f} {r['DP loop']:>7.3f} {lx:>5.2f}x "
                f"{r['DP vmap']:>7.3f} {vx:>5.2f}x | {blx:>19.2f}x {bvx:>5.2f}x"
            )
    verdict = "meets" if best <= GOAL else "misses"
    print(f"\ngoal DP/non-DP <= {GOAL}x (medians):", *verdicts, sep="\n")
    print(
        f"best with the backbone trained: {best:.2f}x, {verdict} the goal.\n"
        "Why: a DP step needs one gradient per episode, i.e. E forward/backward passes of K\n"
        "frames instead of one pass of E*K frames (lower arithmetic intensity per pass), plus a\n"
        "norm, scale and add over all parameters per episode and one Gaussian draw per\n"
        "parameter (from the AES-256-CTR CSPRNG on the CPU, which the DP guarantee needs).\n"
        "The ratio falls as K grows (fixed per-pass cost amortised) and with a\n"
        "frozen backbone; vmap batches the per-episode passes and should gain most on a GPU."
    )


if __name__ == "__main__":
    main()
