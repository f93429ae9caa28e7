"""PNG plots for the data owner's pages (matplotlib's Agg canvas, no pyplot global state).

ε over time is recomputed at every ledger entry by composing the whole history up to it with
:func:`privacy.accounting.epsilon`; ε values are never added.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import matplotlib.dates as mdates
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from privacy.accounting import Mechanism, epsilon

MAX_POINTS = 300
COLOURS = ("#2457c5", "#1e7b45", "#b3261e", "#c77c02", "#7a3fb8", "#3a8f9c")


class LedgerLike(Protocol):
    at: datetime
    kind: str
    study: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    unit: str


@dataclass(frozen=True)
class EpsilonPoint:
    at: datetime
    spent: float  # ε of everything charged so far
    committed: float  # ε of charged + still-reserved, composed


def _mechanism(entry: LedgerLike, steps: int | None = None) -> Mechanism:
    return Mechanism(
        entry.noise_multiplier, entry.sample_rate, entry.steps if steps is None else steps, entry.unit
    )


def epsilon_timeline(entries: Iterable[LedgerLike], delta: float) -> list[EpsilonPoint]:
    """ε spent and committed after each ledger entry (in order), each composed from scratch.

    Mirrors :func:`datasite.budget.outstanding`: a reservation counts for its steps not yet
    charged, until the study's reservation is released.
    """
    entries = list(entries)
    if len(entries) > MAX_POINTS:  # long ledgers: evaluate at evenly spaced prefixes, keep the last
        keep = set(np.linspace(0, len(entries) - 1, MAX_POINTS).round().astype(int).tolist())
    else:
        keep = set(range(len(entries)))
    charged: list[Mechanism] = []
    reserved: dict[str, LedgerLike] = {}
    used: dict[str, int] = {}
    released: set[str] = set()
    points = []
    for i, e in enumerate(entries):
        if e.kind == "charge":
            charged.append(_mechanism(e))
            used[e.study] = used.get(e.study, 0) + e.steps
        elif e.kind == "reserve":
            reserved[e.study] = e
        elif e.kind == "release":
            released.add(e.study)
        if i not in keep:
            continue
        outstanding = [
            _mechanism(r, r.steps - used.get(s, 0))
            for s, r in reserved.items()
            if s not in released and r.steps > used.get(s, 0)
        ]
        points.append(EpsilonPoint(e.at, epsilon(charged, delta), epsilon(charged + outstanding, delta)))
    return points


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def epsilon_png(
    points: Sequence[EpsilonPoint], epsilon_max: float, title: str = "", now: datetime | None = None
) -> bytes:
    """Step plot of ε spent and committed over time (held until ``now``) against the budget ε_max."""
    fig = Figure(figsize=(7.5, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(
        epsilon_max, color="#b3261e", linestyle="--", linewidth=1.2, label=f"budget ε = {epsilon_max:g}"
    )
    if not points:
        ax.text(
            0.5,
            0.5,
            "No privacy spent or reserved yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#5b6576",
        )
        ax.set_ylim(0, epsilon_max * 1.15)
        ax.set_xticks([])
    else:
        finite = [v for p in points for v in (p.spent, p.committed) if math.isfinite(v)]
        top = max([epsilon_max, *finite]) * 1.15
        end = max(now or points[-1].at, points[-1].at)
        times = [p.at for p in points] + [end]  # the last state holds until now
        committed = [p.committed for p in points] + [points[-1].committed]
        spent = [p.spent for p in points] + [points[-1].spent]

        def clip(values: list[float]) -> list[float]:
            return [v if math.isfinite(v) else top for v in values]

        ax.step(
            times,
            clip(committed),
            where="post",
            color="#c77c02",
            linewidth=1.8,
            label="committed (spent + reserved)",
        )
        ax.step(times, clip(spent), where="post", color="#2457c5", linewidth=2.2, label="spent")
        ax.plot(times[:-1], clip(spent[:-1]), "o", color="#2457c5", markersize=3)
        if any(math.isinf(v) for v in committed + spent):
            ax.text(
                0.01,
                0.97,
                "∞: a mechanism without DP noise",
                transform=ax.transAxes,
                va="top",
                fontsize=8,
                color="#b3261e",
            )
        pad = max((end - times[0]) * 0.05, timedelta(seconds=1))
        ax.set_xlim(times[0] - pad, end + pad)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_ylim(0, top)
    ax.set_ylabel("ε (composed)")
    if title:
        ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return _png(fig)


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
        return _png(fig)
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
    return _png(fig)


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
    return _png(fig)
