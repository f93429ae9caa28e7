"""The three non-IID SO-100 sites of ``federated_vs_local.py``: generated with the lab-a, lab-b
and lab-c profiles, split into training and held-out episodes by the datasite's rule, pooled
into one LeRobot dataset (their exact union), and their pooled normalization statistics."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasite.datagen import generate_so100
from datasite.training.dataset import load_dataset
from datasite.training.stats import site_stats
from privacy.normstats import aggregate_stats

SITES: tuple[tuple[str, str], ...] = (("site-a", "lab-a"), ("site-b", "lab-b"), ("site-c", "lab-c"))


@dataclass
class Site:
    """One site's dataset and its split; ``offset`` is its first episode index in the pool."""

    name: str
    profile: str
    root: Path
    train: list[int]
    holdout: list[int]
    lengths: dict[int, int]
    offset: int = 0

    @property
    def train_frames(self) -> int:
        return sum(self.lengths[e] for e in self.train)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "episodes": len(self.lengths),
            "train_episodes": self.train,
            "holdout_episodes": self.holdout,
            "train_frames": self.train_frames,
            "holdout_frames": sum(self.lengths[e] for e in self.holdout),
        }


def split_episodes(n: int, seed: int, holdout_fraction: float) -> tuple[list[int], list[int]]:
    """The datasite's split rule (``datasite.consent.split_episodes``, consent aside)."""
    order = np.random.default_rng([seed, 17]).permutation(n).tolist()
    n_hold = math.ceil(holdout_fraction * n) if n > 1 else 0
    holdout = set(order[:n_hold])
    return sorted(set(range(n)) - holdout), sorted(holdout)


def episode_lengths(root: Path) -> dict[int, int]:
    column = load_dataset(root).hf_dataset.data.column("episode_index").to_pylist()
    counts: dict[int, int] = {}
    for ep in column:
        counts[int(ep)] = counts.get(int(ep), 0) + 1
    return dict(sorted(counts.items()))


def make_sites(work: Path, args: argparse.Namespace) -> tuple[list[Site], Path]:
    """Generate the three non-IID sites and the pooled dataset (their exact union)."""
    sites = []
    for i, (name, profile) in enumerate(SITES):
        root = work / name
        generate_so100(root, args.episodes, min(3, args.episodes), seed=args.seed * 100 + i + 1,
                       profile=profile, image_size=tuple(args.image_size))
        lengths = episode_lengths(root)
        train, holdout = split_episodes(len(lengths), args.seed, args.holdout_fraction)
        sites.append(Site(name, profile, root, train, holdout, lengths))
    pool = work / "pooled"
    aggregate([s.root for s in sites], pool)
    offset = 0
    for s in sites:
        s.offset = offset
        offset += len(s.lengths)
    check_pool(sites, pool)
    return sites, pool


def aggregate(roots: list[Path], dest: Path) -> None:
    from lerobot.datasets.aggregate import aggregate_datasets

    try:
        from lerobot.utils.utils import SuppressProgressBars
    except ImportError:  # older lerobot: progress bars stay
        import contextlib

        SuppressProgressBars = contextlib.nullcontext
    with SuppressProgressBars():
        aggregate_datasets([f"fedsilo/{r.name}" for r in roots], "fedsilo/pooled", roots=roots,
                           aggr_root=dest)


def check_pool(sites: list[Site], pool: Path) -> None:
    """The pooled dataset holds each site's episodes, in order, with identical frames."""
    pooled = episode_lengths(pool)
    want = {s.offset + e: n for s in sites for e, n in s.lengths.items()}
    if pooled != want:
        raise RuntimeError(f"pooled dataset has episode lengths {pooled}, expected {want}")
    for s in sites:
        ep = s.train[-1]
        a = load_dataset(s.root, episodes=[ep])
        b = load_dataset(pool, episodes=[s.offset + ep])
        for row in (0, len(a) - 1):
            x, y = a[row], b[row]
            for key in ("observation.state", "action", "observation.images.top"):
                if not np.array_equal(x[key].numpy(), y[key].numpy()):
                    raise RuntimeError(f"pooled episode {s.offset + ep} differs from {s.name} episode {ep}")


def pooled_stats(sites: list[Site], seed: int) -> dict[str, dict[str, Any]]:
    """Each site's training-episode statistics, pooled as the orchestrator pools them."""
    info = json.loads((sites[0].root / "meta" / "info.json").read_text())
    keys = [k for k in info["features"]
            if k in ("observation.state", "action") or k.startswith("observation.images.")]
    return aggregate_stats([site_stats(s.root, s.train, keys, seed=seed) for s in sites])
