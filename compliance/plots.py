"""The ε-over-time plot of a dataset's privacy ledger, as PNG (matplotlib's Agg canvas, no pyplot).

Drawn from :class:`privacy.ledger.EpsilonPoint`s: in compliance reports (from the report's
timeline) and on the data owner's dataset page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import matplotlib.dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from privacy.ledger import EpsilonPoint


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
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
    return png(fig)
