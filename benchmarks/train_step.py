"""Training-step throughput and peak memory per recipe (non-DP, and DP-SGD per episode).

Each recipe runs in its own subprocess so that peak memory (CUDA max allocated, or the
process's max RSS on CPU) belongs to that recipe alone. Inputs are synthetic SO-100 batches
(the recipe's windows, already collated), so the figures are model compute, not data loading.

    .venv/bin/python benchmarks/train_step.py                       # act, diffusion, smolvla-tiny
    .venv/bin/python benchmarks/train_step.py --image-size 32 40 --steps 5
    .venv/bin/python benchmarks/train_step.py --smolvla-weights DIR  # adds full SmolVLA
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")  # smolvla-tiny's cache folder
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_RECIPES = ("act-small", "diffusion-small", "smolvla-tiny")


def synthetic_stats() -> dict:
    """Plausible SO-100 normalization stats (joint degrees, images in [0, 1])."""
    import numpy as np

    joints = {"mean": np.zeros(6), "std": np.full(6, 20.0), "min": np.full(6, -90.0)}
    joints["max"] = np.full(6, 90.0)
    image = {"mean": np.full((3, 1, 1), 0.4), "std": np.full((3, 1, 1), 0.2)}
    image |= {"min": np.zeros((3, 1, 1)), "max": np.ones((3, 1, 1))}
    return {
        "observation.state": joints,
        "action": joints,
        "observation.images.top": image,
        "observation.images.wrist": image,
    }


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(args: argparse.Namespace) -> dict:
    """Measure one recipe in this process; returns a JSON-able dict."""
    import torch

    from datasite.datagen import so100_features
    from datasite.training import dp
    from datasite.training.recipes import build_policy, synthetic_batch
    from tests import smolvla_tiny  # noqa: F401 (registers the smolvla-tiny recipe)

    if args.threads:
        torch.set_num_threads(args.threads)

    features = so100_features(image_size=tuple(args.image_size))
    config = {"weights_dir": args.smolvla_weights} if args.recipe == "smolvla" else {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bundle = build_policy(args.recipe, config, features, synthetic_stats(), device=device)
    policy = bundle.policy
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params.values(), lr=1e-5)
    batch = bundle.preprocessor(synthetic_batch(bundle, features, args.batch))
    k = args.frames_per_episode
    units = [
        bundle.preprocessor(synthetic_batch(bundle, features, k, seed=i + 1))
        for i in range(max(1, args.batch // k))
    ]
    noise = dp.dp_streams(bytes(32)).noise  # a fixed key: the benchmark is reproducible
    _sync(device)
    base_mb = _peak_mb(device)

    def plain_step() -> None:
        loss = bundle.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def dp_step() -> None:
        grads = dp.noisy_clipped_gradient(
            policy,
            params,
            units,
            bundle.loss_fn,
            clip_norm=1.0,
            noise_multiplier=1.0,
            expected_units=len(units),
            noise=noise,
        )
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()
        opt.zero_grad(set_to_none=True)

    # plain and DP steps alternate, so that load from other processes hits both alike
    modes = {"plain": plain_step} | ({} if args.no_dp else {"dp": dp_step})
    times: dict[str, list[float]] = {m: [] for m in modes}
    peak: dict[str, float] = {}
    for i in range(args.warmup + args.steps):
        for name, step in modes.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            peak.setdefault(name, _peak_mb(device))  # RSS only grows: first DP peak is DP's
    plain, dp_times = times["plain"], times.get("dp", [])
    return {
        "recipe": args.recipe,
        "device": device.type,
        "params": sum(p.numel() for p in policy.parameters()),
        "trainable": sum(p.numel() for p in params.values()),
        "batch": args.batch,
        "image": list(args.image_size),
        "step_s": statistics.median(plain),
        "best_step_s": min(plain),
        "steps_per_s": 1 / statistics.median(plain),
        "dp_step_s": statistics.median(dp_times) if dp_times else None,
        "best_dp_step_s": min(dp_times) if dp_times else None,
        "dp_units": f"{len(units)}x{k}",
        "mem_before_mb": base_mb,
        "peak_mb": peak["plain"],
        "peak_dp_mb": _peak_mb(device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help="frames per non-DP step")
    ap.add_argument("--frames-per-episode", type=int, default=4, help="K for the DP step")
    ap.add_argument("--image-size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-dp", action="store_true", help="skip the DP-SGD measurement")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a busy box)")
    ap.add_argument("--smolvla-weights", help="local SmolVLA checkpoint folder (adds 'smolvla')")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    recipes = [r for r in args.recipes.split(",") if r]
    if args.smolvla_weights and "smolvla" not in recipes:
        recipes.append("smolvla")
    passthrough = [
        f"--batch={args.batch}",
        f"--frames-per-episode={args.frames_per_episode}",
        "--image-size",
        *map(str, args.image_size),
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        *(["--no-dp"] if args.no_dp else []),
        *([f"--threads={args.threads}"] if args.threads else []),
        *([f"--smolvla-weights={args.smolvla_weights}"] if args.smolvla_weights else []),
    ]
    rows = []
    for recipe in recipes:
        cmd = [sys.executable, __file__, "--child", "--recipe", recipe, *passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{recipe}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, torch threads "
        f"{args.threads or 'default'}; {args.steps} interleaved steps after {args.warmup} warm-up"
    )
    head = (
        f"{'recipe':16} {'dev':4} {'params':>11} {'trainable':>11} {'s/step':>7} {'best':>6} "
        f"{'steps/s':>7} {'DP s/step':>9} {'best':>6} {'DP/plain':>8} {'best':>6} "
        f"{'peak MB':>7} {'(+train)':>8} {'DP peak':>7}"
    )
    print(head)
    for r in rows:
        nan = float("nan")
        dp_med, dp_best = r["dp_step_s"] or nan, r["best_dp_step_s"] or nan
        print(
            f"{r['recipe']:16} {r['device']:4} {r['params']:>11,} {r['trainable']:>11,} "
            f"{r['step_s']:>7.3f} {r['best_step_s']:>6.3f} {r['steps_per_s']:>7.2f} "
            f"{dp_med:>9.3f} {dp_best:>6.3f} {dp_med / r['step_s']:>7.2f}x "
            f"{dp_best / r['best_step_s']:>5.2f}x {r['peak_mb']:>7.0f} "
            f"{r['peak_mb'] - r['mem_before_mb']:>+8.0f} {r['peak_dp_mb']:>7.0f}"
        )
    print(
        f"batch {args.batch} frames at {args.image_size[0]}x{args.image_size[1]}; DP = "
        f"{args.batch // args.frames_per_episode} episodes x {args.frames_per_episode} frames, "
        "loop per episode; s/step = median, best = minimum (least disturbed by other load); "
        "peak = CUDA max allocated or process max RSS."
    )


if __name__ == "__main__":
    main()
