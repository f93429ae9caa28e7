"""Held-out loss of a federated policy vs pooled-centralized training vs each site alone.

One non-IID split: three sites generated with the SO-100 profiles lab-a, lab-b and lab-c
(different tasks, arm speeds, lighting, camera placement and object regions). Each site's
episodes are split into training and held-out episodes by the datasite's own rule (a seeded
permutation, ``ceil(holdout_fraction * episodes)`` held out). Three ways to train ``act-small``
(a small ACT, frozen ResNet18, top camera, from the same seeded initialisation):

(a) **federated**: R rounds; in each, every site runs K local steps from the global weights with
    the platform's own :func:`datasite.training.trainer.train_local` (FedProx term μ), and the
    updates are combined with :func:`privacy.strategies.aggregate_plain` (weighted by training
    frames, as a datasite reports them) and :func:`privacy.strategies.server_update`: the same
    functions the round engine calls, in-process, without HTTP;
(b) **centralized**: one ``train_local`` run of 3·R·K steps on the *pooled* dataset, the union
    of the three sites' training episodes written as one LeRobot dataset by lerobot's own
    ``aggregate_datasets`` (checked frame by frame against the sources): frames are drawn
    uniformly from the union and AdamW runs without interruption, the usual centralized
    baseline. (Alternating ``train_local`` across the three roots instead would restart AdamW
    at every switch and fix the mix of sites per step, a handicap real pooling does not have);
(c) **each site alone**: ``train_local`` on that site's training episodes only, for the same
    3·R·K steps (the whole federation's step budget, so local training is not short of
    compute, only of data).

Every model is evaluated with :func:`datasite.training.trainer.evaluate` on every site's
held-out episodes (the same seeded frames for every model) under the same normalization
statistics: those of the three sites' training episodes pooled with
:func:`privacy.normstats.aggregate_stats`, which the federation also uses. The figure of merit
is the mean of the three sites' held-out losses (each site counts once). Goals: federated ≤ 1.1×
centralized, and ≥ 20 % lower than the best single site.

DP is **off** by default; ``--dp`` turns on episode-level DP-SGD for every arm alike
(σ, C, expected episodes per step as given; ε reported per dataset at δ = 1e-5).

    .venv/bin/python benchmarks/federated_vs_local.py                 # R=10, K=20: ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/federated_vs_local.py --rounds 40 --mu 0  # longer, plain FedAvg
    .venv/bin/python benchmarks/federated_vs_local.py --dp --noise-multiplier 0.8

Writes ``benchmarks/results/federated_vs_local.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from non_iid_sites import SITES, Site, make_sites, pooled_stats

from datasite.training.recipes import build_policy
from datasite.training.recipes.act import TINY_ACT
from datasite.training.trainer import LocalPlan, evaluate, train_local
from datasite.training.weights import trainable_state
from privacy.accounting import epsilon
from privacy.strategies import ClientResult, ServerHParams, ServerState, aggregate_plain, server_update

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "federated_vs_local.json"

RECIPE = "act-small"
RECIPE_CONFIG = TINY_ACT  # small enough for 2 CPU cores
GOAL_VS_CENTRALIZED = 1.1  # federated / centralized, at most
GOAL_VS_BEST_LOCAL = 0.20  # 1 - federated / best single site, at least
DP_DELTA = 1e-5


@dataclass
class Arm:
    """One trained model: its weights, how many steps it took and how long."""

    name: str
    weights: dict[str, Any]
    steps: int
    seconds: float
    mechanisms: dict[str, list] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.losses.values())


# --------------------------------------------------------------------------- training


def initial_weights(root: Path, stats: dict, device: str) -> dict[str, Any]:
    """The recipe's seeded, data-free initial trainable weights (what round 0 starts from)."""
    info = json.loads((root / "meta" / "info.json").read_text())
    bundle = build_policy(RECIPE, RECIPE_CONFIG, info["features"], stats, device=device)
    return trainable_state(bundle.policy)


def local_plan(args: argparse.Namespace, steps: int, seed: int, episodes: int, mu: float = 0.0):
    common = {"local_steps": steps, "lr": args.lr, "mu": mu, "seed": seed, "eval_frames": 8}
    if not args.dp:
        return LocalPlan(batch_size=args.batch_size, **common)
    return LocalPlan(
        batch_size=min(args.dp_episodes, episodes), dp=True, noise_multiplier=args.noise_multiplier,
        clip_norm=args.clip_norm, unit="episode", frames_per_episode=args.frames_per_episode,
        # a fixed key for a reproducible benchmark; production draws it from the OS
        dp_seed=hashlib.sha256(f"federated_vs_local:{seed}".encode()).digest(),
        **common,
    )


def _train(init, root: Path, episodes: list[int], plan, stats, device: str):
    return train_local(init, RECIPE, RECIPE_CONFIG, root, episodes, plan, stats, progress=False,
                       device=device)


def run_federated(args, sites: list[Site], init, stats, bar) -> Arm:
    strategy = "fedprox" if args.mu > 0 else "fedavg"
    weights = {k: v.numpy() for k, v in init.items()}
    state, hparams = ServerState(), ServerHParams(proximal_mu=args.mu)
    mechanisms: dict[str, list] = {s.name: [] for s in sites}
    started = time.perf_counter()
    for r in range(1, args.rounds + 1):
        results = []
        for i, s in enumerate(sites):
            bar.set_description(f"federated round {r}/{args.rounds} {s.name}")
            plan = local_plan(args, args.local_steps, args.seed * 100_003 + r * 10 + i, len(s.train), args.mu)
            result = _train({k: torch.tensor(v) for k, v in weights.items()}, s.root, s.train, plan,
                            stats, args.device)
            update = {k: v.numpy() for k, v in result.update.items()}
            results.append(ClientResult(update, num_examples=s.train_frames, local_steps=args.local_steps))
            if result.mechanism is not None:
                mechanisms[s.name].append(result.mechanism)
            bar.update(args.local_steps)
        avg = aggregate_plain(results, strategy)
        weights, state = server_update(strategy, weights, avg, state, hparams)
        if not all(np.isfinite(w).all() for w in weights.values()):
            raise RuntimeError(f"federated weights are not finite after round {r}")
    steps = args.rounds * args.local_steps * len(sites)
    return Arm(f"federated ({strategy})", {k: torch.tensor(v) for k, v in weights.items()}, steps,
               time.perf_counter() - started, mechanisms)


def run_centralized(args, sites: list[Site], pool: Path, init, stats, bar, steps: int) -> Arm:
    episodes = [s.offset + e for s in sites for e in s.train]
    bar.set_description(f"centralized: {steps} steps on the pooled data")
    started = time.perf_counter()
    plan = local_plan(args, steps, args.seed * 100_003 + 7, len(episodes))
    result = _train(init, pool, episodes, plan, stats, args.device)
    bar.update(steps)
    weights = {k: init[k] + d for k, d in result.update.items()}
    mech = {"pooled": [result.mechanism]} if result.mechanism is not None else {}
    return Arm("centralized (pooled)", weights, steps, time.perf_counter() - started, mech)


def run_local(args, site: Site, init, stats, bar, steps: int, index: int) -> Arm:
    bar.set_description(f"{site.name} alone: {steps} steps")
    started = time.perf_counter()
    plan = local_plan(args, steps, args.seed * 100_003 + 11 + index, len(site.train))
    result = _train(init, site.root, site.train, plan, stats, args.device)
    bar.update(steps)
    weights = {k: init[k] + d for k, d in result.update.items()}
    mech = {site.name: [result.mechanism]} if result.mechanism is not None else {}
    return Arm(f"{site.name} alone", weights, steps, time.perf_counter() - started, mech)


def evaluate_arm(arm: Arm, sites: list[Site], stats, args) -> None:
    for s in sites:
        arm.losses[s.name] = evaluate(arm.weights, RECIPE, RECIPE_CONFIG, s.root, s.holdout, stats,
                                      frames=args.eval_frames, seed=args.seed, device=args.device)


def epsilons(arm: Arm) -> dict[str, float]:
    return {name: epsilon(history, DP_DELTA) for name, history in arm.mechanisms.items() if history}


# --------------------------------------------------------------------------- report


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole comparison; returns the figures written to the JSON file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    from tqdm.auto import tqdm

    datasets.disable_progress_bars()  # lerobot's parquet loading; our own bars stay
    torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedsilo-fvl-") as tmp:
        work = Path(args.data_dir) if args.data_dir else Path(tmp)
        print(f"generating {len(SITES)} non-IID sites x {args.episodes} episodes "
              f"({args.image_size[0]}x{args.image_size[1]}) and their pooled union in {work} ...", flush=True)
        sites, pool = make_sites(work, args)
        stats = pooled_stats(sites, args.seed)
        init = initial_weights(sites[0].root, stats, args.device)
        total = args.rounds * args.local_steps * len(sites)
        setup_s = time.perf_counter() - started

        arms: list[Arm] = []
        with tqdm(total=total * (2 + len(sites)), unit="step", desc="training") as bar:
            arms.append(run_federated(args, sites, init, stats, bar))
            arms.append(run_centralized(args, sites, pool, init, stats, bar, total))
            arms.extend(run_local(args, s, init, stats, bar, total, i) for i, s in enumerate(sites))
        untrained = Arm("initial weights", init, 0, 0.0)
        for arm in tqdm([*arms, untrained], desc="held-out evaluation", unit="model"):
            evaluate_arm(arm, sites, stats, args)

    fed, central, locals_ = arms[0], arms[1], arms[2:]
    best = min(locals_, key=lambda a: a.mean)
    ratio_central = fed.mean / central.mean
    improvement = 1.0 - fed.mean / best.mean
    own_site = {s.name: {"alone": a.losses[s.name], "federated": fed.losses[s.name],
                         "federated_over_alone": fed.losses[s.name] / a.losses[s.name]}
                for s, a in zip(sites, locals_, strict=True)}
    return {
        "benchmark": "federated_vs_local",
        "recipe": RECIPE,
        "recipe_config": RECIPE_CONFIG,
        "settings": {
            "rounds": args.rounds, "local_steps": args.local_steps, "sites": len(sites),
            "total_steps_per_arm": total, "batch_size": args.batch_size, "lr": args.lr, "mu": args.mu,
            "episodes_per_site": args.episodes, "holdout_fraction": args.holdout_fraction,
            "image_size": list(args.image_size), "eval_frames_per_site": args.eval_frames,
            "seed": args.seed, "device": args.device, "torch_threads": args.threads,
            "dp": {"enabled": args.dp, "unit": "episode", "noise_multiplier": args.noise_multiplier,
                   "clip_norm": args.clip_norm, "expected_episodes_per_step": args.dp_episodes,
                   "frames_per_episode": args.frames_per_episode, "delta": DP_DELTA} if args.dp
            else {"enabled": False},
        },
        "sites": {s.name: s.to_dict() for s in sites},
        "heldout_loss": {a.name: {**a.losses, "mean": a.mean} for a in [*arms, untrained]},
        "train_seconds": {a.name: round(a.seconds, 1) for a in arms},
        "epsilon": {a.name: epsilons(a) for a in arms} if args.dp else None,
        "federated_over_centralized": ratio_central,
        "best_single_site": best.name,
        "improvement_over_best_single_site": improvement,
        "own_site": own_site,
        "goals": {
            "federated_over_centralized_max": GOAL_VS_CENTRALIZED,
            "federated_over_centralized_met": ratio_central <= GOAL_VS_CENTRALIZED,
            "improvement_over_best_single_site_min": GOAL_VS_BEST_LOCAL,
            "improvement_over_best_single_site_met": improvement >= GOAL_VS_BEST_LOCAL,
        },
        "environment": {
            "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "setup_seconds": round(setup_s, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def print_report(res: dict[str, Any]) -> None:
    st = res["settings"]
    names = list(res["sites"])
    print()
    dp = "on" if st["dp"]["enabled"] else "off"
    print(f"held-out loss (ACT L1 on normalised actions; lower is better), {st['sites']} non-IID sites, "
          f"{st['total_steps_per_arm']} gradient steps per model, DP {dp}")
    head = f"{'model':24}" + "".join(f"{n:>10}" for n in names) + f"{'mean':>10}{'train s':>9}"
    print(head)
    print("-" * len(head))
    for model, losses in res["heldout_loss"].items():
        secs = res["train_seconds"].get(model)
        print(f"{model:24}" + "".join(f"{losses[n]:>10.4f}" for n in names) + f"{losses['mean']:>10.4f}"
              + (f"{secs:>9.0f}" if secs is not None else f"{'':>9}"))
    print()
    for name, site in res["sites"].items():
        print(f"  {name} ({site['profile']}): {site['episodes']} episodes, "
              f"{len(site['train_episodes'])} train ({site['train_frames']} frames), "
              f"{len(site['holdout_episodes'])} held out ({site['holdout_frames']} frames)")
    if res["epsilon"]:
        for model, eps in res["epsilon"].items():
            print(f"  ε at δ={DP_DELTA:g}, {model}: " + ", ".join(f"{k} {v:.2f}" for k, v in eps.items()))
    g = res["goals"]
    print()
    met = "met" if g["federated_over_centralized_met"] else "MISSED"
    print(f"federated / centralized         = {res['federated_over_centralized']:.3f}   "
          f"(goal <= {g['federated_over_centralized_max']}: {met})")
    print(f"improvement over best single site ({res['best_single_site']}) = "
          f"{100 * res['improvement_over_best_single_site']:.1f}%   "
          f"(goal >= {100 * g['improvement_over_best_single_site_min']:.0f}%: "
          f"{'met' if g['improvement_over_best_single_site_met'] else 'MISSED'})")
    print("on each site's own held-out episodes, federated / that site alone: "
          + ", ".join(f"{n} {v['federated_over_alone']:.3f}" for n, v in res["own_site"].items()))
    env = res["environment"]
    print(f"{res['wall_seconds']:.0f} s in all on {env['cpus']} CPUs ({st['device']}), "
          f"load average {env['load_average_1m']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="federated rounds R")
    ap.add_argument("--local-steps", type=int, default=20, help="local steps K per site and round")
    ap.add_argument("--mu", type=float, default=0.01, help="FedProx μ (0 = FedAvg)")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, every arm")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per step without DP")
    ap.add_argument("--episodes", type=int, default=12, help="episodes per site")
    ap.add_argument("--holdout-fraction", type=float, default=0.2, help="as a study plan's")
    ap.add_argument("--image-size", type=int, nargs=2, default=(32, 40), metavar=("H", "W"))
    ap.add_argument("--eval-frames", type=int, default=96, help="held-out frames evaluated per site")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dp", action="store_true",
                    help="episode-level DP-SGD in every arm (default: off, no DP anywhere)")
    ap.add_argument("--noise-multiplier", type=float, default=1.0, help="σ, with --dp")
    ap.add_argument("--clip-norm", type=float, default=1.0, help="C, with --dp")
    ap.add_argument("--dp-episodes", type=int, default=4, help="expected episodes per step, with --dp")
    ap.add_argument("--frames-per-episode", type=int, default=4, help="frames per sampled episode, with --dp")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 is several times faster than 2 on a busy 2-core "
                    "machine; losses differ only by rounding)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--data-dir",
                    help="a new folder: generate the datasets there and keep them (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = ap.parse_args(argv)
    if min(args.rounds, args.local_steps, args.episodes, args.batch_size, args.eval_frames) < 1:
        ap.error("--rounds, --local-steps, --episodes, --batch-size and --eval-frames must be >= 1")
    if args.episodes < 2:
        ap.error("--episodes must be >= 2 (some are held out)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print_report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
