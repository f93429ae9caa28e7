"""PNG plots of a study's rounds for the researcher's pages (matplotlib's Agg canvas, no pyplot).

Both take the rounds as :func:`orchestrator.services.metrics` returns them: per round
``sites`` (name → the metrics the site released: ``loss_after``, ``epsilon_spent``,
``dataset``…), ``heldout_loss`` (of the global model the round *started from*) and
``epsilon`` (``"site/dataset"`` → ε spent at that dataset after the round).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLOURS = ("#2457c5", "#1e7b45", "#b3261e", "#c77c02", "#7a3fb8", "#3a8f9c")


def _number(value: Any) -> float | None:
    """A finite float, or None for a missing, non-numeric or non-finite value."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#5b6576")
    ax.set_xticks([])
    ax.set_yticks([])


def _finish(fig: Figure, ax: Any, title: str, xlabel: str, ylabel: str) -> bytes:
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def loss_series(
    rounds: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, float]]]:
    """Per-site local loss after each training round, and the global held-out loss.

    The held-out loss a round reports is of the model it started from, that is the global
    model after the previous round, so it is placed at ``round - 1`` (0: the initial model).
    """
    sites: dict[str, list[tuple[int, float]]] = {}
    heldout: list[tuple[int, float]] = []
    for r in rounds:
        number = int(r["round"])
        if not r.get("eval_only"):
            for name, m in sorted((r.get("sites") or {}).items()):
                loss = _number((m or {}).get("loss_after"))
                if loss is not None:
                    sites.setdefault(name, []).append((number, loss))
        held = _number(r.get("heldout_loss"))
        if held is not None:
            heldout.append((number - 1, held))
    return sites, heldout


def loss_png(rounds: Sequence[Mapping[str, Any]], title: str = "") -> bytes:
    """Each site's local training loss per round and the global model's held-out loss."""
    fig = Figure(figsize=(7.5, 3.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    sites, heldout = loss_series(rounds)
    if not sites and not heldout:
        _empty(ax, "No round has reported a loss yet")
    for i, (name, points) in enumerate(sorted(sites.items())):
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            "o-",
            color=COLOURS[i % len(COLOURS)],
            linewidth=1.6,
            markersize=4,
            label=f"{name} (local, after training)",
        )
    if heldout:
        ax.plot(
            [x for x, _ in heldout],
            [y for _, y in heldout],
            "s--",
            color="#1d2430",
            linewidth=1.8,
            markersize=5,
            label="global model (held-out)",
        )
    return _finish(
        fig, ax, title or "Loss per round", "round (held-out: the global model after that round)", "loss"
    )


def epsilon_series(rounds: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float | None]]]:
    """``"site/dataset"`` → (round, ε spent at the dataset after it); None for ∞ (no DP noise)."""
    out: dict[str, list[tuple[int, float | None]]] = {}
    for r in rounds:
        if r.get("eval_only"):
            continue
        for key, value in sorted((r.get("epsilon") or {}).items()):
            if value is None:
                continue
            inf = isinstance(value, int | float) and not isinstance(value, bool) and math.isinf(value)
            eps = _number(value)
            if eps is not None or inf:
                out.setdefault(key, []).append((int(r["round"]), eps))
    return out


def epsilon_png(
    rounds: Sequence[Mapping[str, Any]], projected: Mapping[str, float | None] | None = None, title: str = ""
) -> bytes:
    """ε spent at each site's dataset after each round, with the ε each site projected at approval."""
    fig = Figure(figsize=(7.5, 3.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    series = epsilon_series(rounds)
    projected = {k: _number(v) for k, v in (projected or {}).items()}
    finite = [e for points in series.values() for _, e in points if e is not None]
    finite += [v for v in projected.values() if v is not None]
    top = max(finite, default=1.0) * 1.15 or 1.0
    if not series:
        _empty(ax, "No round has reported privacy spent yet")
    for i, (key, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        ys = [top if e is None else e for _, e in points]
        ax.plot(
            [x for x, _ in points], ys, "o-", color=colour, linewidth=1.8, markersize=4, label=f"{key} spent"
        )
        limit = projected.get(key)
        if limit is not None:
            ax.axhline(
                limit, color=colour, linestyle=":", linewidth=1.2, label=f"{key} projected at approval"
            )
    if any(e is None for points in series.values() for _, e in points):
        ax.text(
            0.01,
            0.97,
            "∞ drawn at the top: a round without DP noise",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
            color="#b3261e",
        )
    if series:
        ax.set_ylim(0, top)
    return _finish(
        fig, ax, title or "Privacy spent per dataset (ε, all studies at that site)", "round", "ε (composed)"
    )
