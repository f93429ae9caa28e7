"""How a report writes values: times in UTC ISO 8601, ε (∞ as a string), people by username."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

INFINITY = "Infinity"


def iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else None


def num(value: float | None) -> float | str | None:
    """A JSON-safe number: ∞ becomes ``"Infinity"`` (canonical JSON forbids it)."""
    if value is None:
        return None
    return float(value) if math.isfinite(value) else INFINITY


def epsilon_value(value: float | str | None) -> float | None:
    """Inverse of :func:`num`."""
    if value is None:
        return None
    return math.inf if value == INFINITY else float(value)


def username(user: Any) -> str | None:
    return user.get_username() if user is not None else None
