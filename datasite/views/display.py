"""What the data owner's pages share: who may read them, how ε, budget bars, consent coverage
and images are shown."""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.http import HttpResponse

from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN
from datasite.consent import consenting
from datasite.models import CodeRequest, ConsentEvent, Dataset

VIEWERS = (DATA_OWNER, COMPLIANCE_OFFICER)
DATASET_VIEWERS = (DATA_OWNER, COMPLIANCE_OFFICER, NODE_ADMIN)
DEFAULT_PURPOSE = "policy-training"


def eps_text(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞ (no DP noise)" if math.isinf(value) else f"{value:.3g}"


def budget_bar(
    epsilon_max: float, spent: float, committed: float, projected: float | None = None
) -> list[dict]:
    """Segments of a budget bar, in % of ε_max (clipped at 100 %)."""
    edges = [("spent", spent), ("reserved", committed)]
    if projected is not None:
        edges.append(("study", projected))
    out, start = [], 0.0
    for name, value in edges:
        end = 100.0 if not math.isfinite(value) else min(100.0, 100.0 * value / epsilon_max)
        if end > start:
            out.append({"kind": name, "pct": round(end - start, 2)})
            start = end
    return out


@dataclass
class Coverage:
    purpose: str
    episodes: int
    episodes_covered: int
    contributors: int
    contributors_covered: int


def consent_coverage(ds: Dataset, purpose: str, allowed: set[str] | None = None) -> Coverage:
    who = ds.contributors()
    allowed = consenting(purpose) if allowed is None else allowed
    people = set(who.values())
    return Coverage(
        purpose, len(who), sum(1 for c in who.values() if c in allowed), len(people), len(people & allowed)
    )


def known_purposes() -> list[str]:
    """Purposes anyone asked or consented for, the default first."""
    asked = {(p or {}).get("purpose") for p in CodeRequest.objects.values_list("plan", flat=True)}
    found = set(ConsentEvent.objects.values_list("purpose", flat=True).distinct()) | asked
    return [DEFAULT_PURPOSE, *sorted(p for p in found if p and p != DEFAULT_PURPOSE)]


def png_response(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response
