"""Dataset pages: the list, a dataset's schema, synthetic preview, consent coverage and budget,
and their images."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from common.roles import role_required
from datasite import budget, plots
from datasite.models import Dataset
from datasite.views.display import (
    DATASET_VIEWERS,
    budget_bar,
    consent_coverage,
    eps_text,
    known_purposes,
    png_response,
)

LEROBOT_FEATURES = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


def _dataset_rows(ds: Dataset) -> dict[str, Any]:
    view = budget.view(ds)
    return {
        "ds": ds,
        "view": view,
        "bar": budget_bar(ds.epsilon_max, view.spent, view.committed),
        "contributors": len(set(ds.contributors().values())),
        "shown": {
            "spent": eps_text(view.spent),
            "reserved": eps_text(view.reserved),
            "max": f"{ds.epsilon_max:g}",
            "delta": f"{ds.delta:g}",
        },
    }


def _mock_rows(mock: dict[str, Any]) -> list[dict[str, str]]:
    def fmt(value: Any) -> str:
        return ", ".join(f"{v:.1f}" for v in value) if isinstance(value, list) else "—"

    return [
        {
            "frame": str(f.get("frame_index", i)),
            "time": f"{f.get('timestamp', 0):.3f}",
            "state": fmt(f.get("observation.state")),
            "action": fmt(f.get("action")),
        }
        for i, f in enumerate(mock.get("frames") or [])
    ]


# ----------------------------------------------------------------------------- pages


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_list(request: HttpRequest) -> HttpResponse:
    rows = [_dataset_rows(ds) for ds in Dataset.objects.all()]
    return render(request, "datasite/dataset_list.html", {"rows": rows})


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_detail(request: HttpRequest, name: str) -> HttpResponse:
    """Schema, synthetic preview, counts, consent coverage and the budget over time."""
    ds = get_object_or_404(Dataset, name=name)
    features = [
        {
            "key": k,
            "dtype": ft.get("dtype"),
            "shape": " × ".join(str(n) for n in ft.get("shape") or []),
            "names": ", ".join(ft.get("names") or []) if isinstance(ft.get("names"), list) else "",
            "lerobot": k in LEROBOT_FEATURES,
        }
        for k, ft in ds.summary.get("features", {}).items()
    ]
    lengths = sorted(int(v) for v in (ds.summary.get("episode_lengths") or {}).values())
    context = {
        **_dataset_rows(ds),
        "features": features,
        "cameras": ds.summary.get("cameras") or [],
        "robot_type": ds.summary.get("robot_type") or "not stated",
        "fps": ds.summary.get("fps"),
        "mock_rows": _mock_rows(ds.mock),
        "mock_images": bool(plots.mock_image_keys(ds.mock)),
        "lengths": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]}
        if lengths
        else None,
        "coverage": [consent_coverage(ds, p) for p in known_purposes()],
        "ledger": list(ds.ledger.order_by("-at", "-id")[:50]),
        "requests": ds.code_requests.order_by("-received_at"),
    }
    return render(request, "datasite/dataset_detail.html", context)


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_epsilon_png(request: HttpRequest, name: str) -> HttpResponse:
    ds = get_object_or_404(Dataset, name=name)
    return png_response(plots.epsilon_timeline_png(ds, timezone.now()))


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_mock_png(request: HttpRequest, name: str) -> HttpResponse:
    ds = get_object_or_404(Dataset, name=name)
    return png_response(plots.mock_curves_png(ds.mock))


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_mock_images_png(request: HttpRequest, name: str) -> HttpResponse:
    ds = get_object_or_404(Dataset, name=name)
    data = plots.mock_images_png(ds.mock)
    if data is None:
        return HttpResponse("this dataset's preview carries no images", status=404, content_type="text/plain")
    return png_response(data)
