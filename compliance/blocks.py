"""The neutral document model that reports render to, and how values are written in it.

A section is a list of blocks: paragraphs, key-value tables, tables, lists and PNG plots.
HTML (:mod:`compliance.html`) and PDF (:mod:`compliance.pdf`) render the same blocks, so the
HTML page, the PDF and the signed JSON of one report always show the same figures. Long lists
(events, episodes) are cut at :data:`MAX_ROWS` rows in HTML and PDF; the JSON holds them all.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from compliance.values import INFINITY

MAX_ROWS = 500


# ----------------------------------------------------------------------------- formatting


def eps_text(value: float | str | None) -> str:
    """ε as shown in every format: 4 significant digits, ∞ spelled out."""
    if value is None:
        return "—"
    if value == INFINITY or (isinstance(value, float) and math.isinf(value)):
        return "∞ (no DP noise)"
    return f"{float(value):.4g}"


def when(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def ranges(values: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0–2, 5, 7–8"``."""
    out: list[str] = []
    run: list[int] = []
    for v in sorted(set(values)):
        if run and v != run[-1] + 1:
            out.append(_span(run))
            run = []
        run.append(v)
    if run:
        out.append(_span(run))
    return ", ".join(out) or "—"


def _span(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}–{run[-1]}"


def cell_text(value: Any) -> str:
    """Any value of a report as a table cell shows it."""
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ----------------------------------------------------------------------------- document model


@dataclass
class Block:
    """One piece of a section: ``kind`` is p, ok, warning, h3, kv, table, list or image."""

    kind: str
    text: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    png: bytes | None = None

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode()


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]


def p(text: str) -> Block:
    return Block("p", text)


def h3(text: str) -> Block:
    return Block("h3", text)


def kv(rows: Iterable[tuple[str, Any]]) -> Block:
    return Block("kv", rows=[[k, cell_text(v)] for k, v in rows])


def table(headers: list[str], rows: Iterable[list[Any]], what: str = "rows") -> list[Block]:
    """A table (cut at MAX_ROWS, with a note), or a line saying there is nothing."""
    rows = [[cell_text(c) for c in r] for r in rows]
    if not rows:
        return [p(f"No {what}.")]
    blocks = [Block("table", headers=headers, rows=rows[:MAX_ROWS])]
    if len(rows) > MAX_ROWS:
        blocks.append(p(f"{len(rows) - MAX_ROWS} more {what} are in the JSON report."))
    return blocks


def items(values: Iterable[str]) -> Block:
    return Block("list", items=list(values))
