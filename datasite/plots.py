"""PNG plots for the data owner's pages (matplotlib's Agg canvas, no pyplot global state).

ε over time is the dataset's ledger timeline (:meth:`privacy.ledger.Ledger.timeline`: ε
composed from scratch at each entry, never added), drawn by :func:`compliance.plots.epsilon_png`
as in compliance reports.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from compliance.plots import epsilon_png, png
from datasite import budget
from datasite.models import Dataset

MAX_POINTS = 300  # ledger entries evaluated for the ε plot: each costs an accountant run
COLOURS = ("#2457c5", "#1e7b45", "#b3261e", "#c77c02", "#7a3fb8", "#3a8f9c")


def epsilon_timeline_png(ds: Dataset, now: datetime) -> bytes:
    """ε spent and committed of ``ds`` over time, held until ``now``, against its budget."""
    points = budget.load_ledger(ds).timeline(MAX_POINTS)
    return epsilon_png(points, ds.epsilon_max, f"{ds.name}: ε over time (δ = {ds.delta:g})", now)


def _series(frames: list[dict], key: str) -> np.ndarray | None:
    values = [f.get(key) for f in frames]
    if not values or any(v is None for v in values):
        return None
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return None
    return arr.reshape(len(values), -1) if arr.ndim >= 1 else None


def mock_curves_png(mock: dict[str, Any]) -> bytes:
    """State and action of the mock's synthetic frames, one line per joint."""
    frames = mock.get("frames") or []
    keys = [k for k in ("observation.state", "action") if _series(frames, k) is not None]
    fig = Figure(figsize=(7.5, 2.6 * max(1, len(keys))), dpi=100, layout="constrained")
    if not keys:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "The preview has no state or action values", ha="center", va="center")
        ax.set_axis_off()
        return png(fig)
    axes = fig.subplots(len(keys), 1, squeeze=False, sharex=True)[:, 0]
    x = [f.get("frame_index", i) for i, f in enumerate(frames)]
    for ax, key in zip(axes, keys, strict=True):
        values = _series(frames, key)
        names = (mock.get("features", {}).get(key, {}) or {}).get("names") or []
        for j in range(values.shape[1]):
            label = names[j] if j < len(names) else f"{key}[{j}]"
            ax.plot(x, values[:, j], marker="o", linewidth=1.5, color=COLOURS[j % len(COLOURS)], label=label)
        ax.set_title(key, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes[-1].set_xlabel("frame (synthetic values, not real data)")
    return png(fig)


def mock_image_keys(mock: dict[str, Any]) -> list[str]:
    """Camera keys for which the mock's frames carry pixel arrays (not only shapes)."""
    frames = mock.get("frames") or []
    cameras = list(mock.get("cameras") or [])
    return [c for c in cameras if frames and all(isinstance(f.get(c), list) for f in frames)]


def mock_images_png(mock: dict[str, Any]) -> bytes | None:
    """A grid of the mock's synthetic camera images (frames × cameras), or None without arrays."""
    keys = mock_image_keys(mock)
    if not keys:
        return None
    frames = mock["frames"]
    fig = Figure(figsize=(2.2 * len(frames), 2.0 * len(keys)), dpi=100, layout="constrained")
    axes = fig.subplots(len(keys), len(frames), squeeze=False)
    for r, key in enumerate(keys):
        for c, frame in enumerate(frames):
            img = np.asarray(frame[key], dtype=float)
            if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
                img = np.moveaxis(img, 0, -1)  # channels first → last
            if img.max(initial=0) > 1:
                img = img / 255.0
            ax = axes[r, c]
            ax.imshow(np.clip(img.squeeze(), 0, 1), cmap="gray" if img.squeeze().ndim == 2 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{key.removeprefix('observation.images.')} · frame {c}", fontsize=8)
    return png(fig)
