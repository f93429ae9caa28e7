"""Normalization statistics of a site's *training* episodes, for pooling across sites.

Only the episodes given are read (consent and hold-out are applied by the caller). State,
action and other numeric features use every frame; camera features use a seeded sample of
frames, per channel, like lerobot's own ``compute_episode_stats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datasite.training.dataset import load_dataset

__all__ = ["site_stats"]


def _feature_stats(values: np.ndarray, axis: tuple[int, ...], keepdims: bool) -> dict[str, np.ndarray]:
    values = values.astype(np.float64)
    return {
        "mean": values.mean(axis=axis, keepdims=keepdims),
        "std": values.std(axis=axis, keepdims=keepdims),
        "min": values.min(axis=axis, keepdims=keepdims),
        "max": values.max(axis=axis, keepdims=keepdims),
        "count": np.array([values.shape[0]], dtype=np.int64),
    }


def site_stats(
    root: Path, episodes: list[int], keys: list[str], image_frames: int = 64, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per-feature count/mean/std/min/max over ``episodes``; images are (3, 1, 1) per channel."""
    ds = load_dataset(Path(root), episodes=episodes)
    table = ds.hf_dataset.with_format("numpy")
    out: dict[str, dict[str, Any]] = {}
    cameras = [k for k in keys if k in ds.meta.camera_keys]
    for key in keys:
        if key in cameras:
            continue
        column = np.stack(table[key]) if table.num_rows else np.zeros((0,))
        out[key] = _feature_stats(column.reshape(len(column), -1), axis=(0,), keepdims=False)
    if cameras:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(ds), size=min(image_frames, len(ds)), replace=False))
        frames = [ds[int(i)] for i in rows]
        for key in cameras:
            images = np.stack([f[key].numpy() for f in frames])  # (n, 3, h, w) in [0, 1]
            stats = _feature_stats(images, axis=(0, 2, 3), keepdims=True)
            out[key] = {k: (v[0] if k != "count" else v) for k, v in stats.items()}
    return out
