"""The researcher's pages at the orchestrator: studies, a study's rounds and plots, the federation.

Researchers see their own studies, node admins every study (another researcher's study is a
404, as in the API); both see the federation's datasites and their heartbeats. Views are
thin: :mod:`orchestrator.services` reads the state, :mod:`orchestrator.plots` draws it.
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit import trail
from common.errors import NotFound, ServiceError
from common.protocol import RobustPlan
from common.roles import NODE_ADMIN, RESEARCHER, has_role, role_required
from orchestrator import plots, services
from orchestrator.models import Datasite, Study

READERS = (RESEARCHER, NODE_ADMIN)
STALE_BEATS = 3  # a site is stale after this many missed heartbeat periods
PLAN_ROWS = (
    ("Rounds", lambda p: p.get("rounds")),
    ("Local steps per round", lambda p: p.get("local_steps")),
    ("Batch size", lambda p: p.get("batch_size")),
    ("Strategy", lambda p: p.get("strategy")),
    ("FedProx μ", lambda p: p.get("mu")),
    ("Aggregation", lambda p: p.get("aggregation")),
    ("Robust aggregation", lambda p: RobustPlan.model_validate(p.get("robust") or {}).describe()),
    ("Minimum sites", lambda p: p.get("min_sites")),
    ("DP", lambda p: _dp_text(p.get("dp") or {})),
    ("Purpose", lambda p: p.get("purpose")),
)


def _dp_text(dp: dict[str, Any]) -> str:
    if not dp.get("enabled", True):
        return "off: no noise, ε is unbounded"
    return (
        f"σ = {dp.get('noise_multiplier')}, clip {dp.get('clip_norm')}, δ = {dp.get('delta')}, "
        f"per {dp.get('unit', 'episode')}"
    )


def _eps(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int | float) and math.isinf(value):
        return "∞"
    return f"{value:.3g}" if isinstance(value, int | float) else str(value)


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "—"


def _get_study(request: HttpRequest, study_id: str) -> Study:
    """The study if this user may read it; 404 otherwise (never reveal others' studies)."""
    try:
        return services.get_study(study_id, request.user)
    except NotFound as exc:
        raise Http404(str(exc)) from exc


def _png_response(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


def _round_rows(rounds: list[dict[str, Any]], sites: list[str], keys: list[str]) -> list[dict[str, Any]]:
    rows = []
    for r in rounds:
        per_site = r.get("sites") or {}
        eps = r.get("epsilon") or {}
        rows.append(
            {
                "round": r["round"],
                "eval_only": r["eval_only"],
                "status": r["status"],
                "participants": ", ".join(r.get("participants") or []) or "—",
                "dropped": ", ".join(r.get("dropped") or []),
                "losses": [_loss((per_site.get(s) or {}).get("loss_after")) for s in sites],
                "heldout": _loss(r.get("heldout_loss")),
                "epsilon": [_eps(eps.get(k)) for k in keys],
                "refusals": r.get("refusals") or {},
            }
        )
    return rows


def _model_available(study: Study) -> bool:
    try:
        return services.model_path(study).is_file()
    except ServiceError:
        return False


# ----------------------------------------------------------------------------- studies


@require_GET
@role_required(*READERS)
def study_list(request: HttpRequest) -> HttpResponse:
    """The researcher's own studies (a node admin's: every study), newest first."""
    studies = Study.objects.select_related("researcher").prefetch_related("sites")
    admin = has_role(request.user, NODE_ADMIN)
    if not admin:
        studies = studies.filter(researcher=request.user)
    rows = [
        {
            "study": s,
            "rounds": (s.plan or {}).get("rounds"),
            "sites": len(s.sites.all()),
            "approved": sum(site.status == "approved" for site in s.sites.all()),
        }
        for s in studies
    ]
    return render(request, "orchestrator/study_list.html", {"rows": rows, "admin": admin})


@require_GET
@role_required(*READERS)
def study_detail(request: HttpRequest, study_id: str) -> HttpResponse:
    """Status and phase, round r/R, each site's decision and projected ε, the rounds and plots."""
    study = _get_study(request, study_id)
    state = services.status(study)
    rounds = services.metrics(study)
    took_part = {n for r in rounds for n in [*(r.get("participants") or []), *(r.get("sites") or {})]}
    shown = [s for s in state["sites"] if s["status"] == "approved" or s["name"] in took_part]
    sites = [s["name"] for s in shown]  # round columns: sites that approved or took part
    keys = [f"{s['name']}/{s['dataset']}" for s in shown]
    for r in rounds:  # a site may report another dataset name than the proposal's
        keys += [k for k in (r.get("epsilon") or {}) if k not in keys]
    total = state["rounds"]
    done = sum(1 for r in rounds if r["status"] == "done" and not r["eval_only"])
    context = {
        "study": study,
        "state": state,
        "site_rows": [{**s, "projected": _eps(s["projected_epsilon"])} for s in state["sites"]],
        "round_now": min(state["round"], total) if state["round"] else 0,
        "rounds_total": total,
        "rounds_done": done,
        "evaluating": state["round"] > total and study.status == Study.Status.RUNNING,
        "sites": sites,
        "eps_keys": keys,
        "round_rows": _round_rows(rounds, sites, keys),
        "plan_rows": [(label, value(study.plan or {})) for label, value in PLAN_ROWS],
        "model": _model_available(study),
        "active": study.status in Study.ACTIVE,
    }
    return render(request, "orchestrator/study_detail.html", context)


@require_GET
@role_required(*READERS)
def study_loss_png(request: HttpRequest, study_id: str) -> HttpResponse:
    study = _get_study(request, study_id)
    return _png_response(plots.loss_png(services.metrics(study), f"{study.title}: loss per round"))


@require_GET
@role_required(*READERS)
def study_epsilon_png(request: HttpRequest, study_id: str) -> HttpResponse:
    study = _get_study(request, study_id)
    projected = {
        f"{s.datasite.name}/{s.dataset}": s.projected_epsilon for s in study.sites.select_related("datasite")
    }
    return _png_response(
        plots.epsilon_png(services.metrics(study), projected, f"{study.title}: ε spent per dataset")
    )


@require_GET
@role_required(*READERS)
def study_model(request: HttpRequest, study_id: str) -> FileResponse:
    """The latest global weights (safetensors) for a signed-in researcher; the download is audited."""
    study = _get_study(request, study_id)
    try:
        path = services.model_path(study)
    except NotFound as exc:
        raise Http404(str(exc)) from exc
    trail.record(
        "model.downloaded",
        request.user,
        f"study:{study.pk}",
        {"file": path.name, "bytes": path.stat().st_size, "via": "web"},
    )
    response = FileResponse(
        path.open("rb"),
        as_attachment=True,
        filename=f"{study.pk}.safetensors",
        content_type="application/octet-stream",
    )
    response["Cache-Control"] = "private, no-store"
    return response


# ----------------------------------------------------------------------------- federation


def site_rows(now: Any = None) -> list[dict[str, Any]]:
    """Every datasite with the age of its last heartbeat and whether it is stale."""
    now = now or timezone.now()
    limit = STALE_BEATS * float(settings.FEDSILO_HEARTBEAT_SECONDS)
    rows = []
    for site in Datasite.objects.all():
        age = (now - site.last_heartbeat).total_seconds() if site.last_heartbeat else None
        joined = site.status == Datasite.Status.JOINED
        rows.append(
            {
                "site": site,
                "age": None if age is None else max(0, round(age)),
                "stale": joined and (age is None or age > limit),
                "studies": site.studies.count(),
            }
        )
    return rows


@require_GET
@role_required(*READERS)
def federation(request: HttpRequest) -> HttpResponse:
    """The member datasites: status, URL, last heartbeat and its age (stale ones highlighted)."""
    rows = site_rows()
    context = {
        "rows": rows,
        "heartbeat": settings.FEDSILO_HEARTBEAT_SECONDS,
        "stale_after": STALE_BEATS * float(settings.FEDSILO_HEARTBEAT_SECONDS),
        "stale": sum(r["stale"] for r in rows),
        "now": timezone.now(),
    }
    return render(request, "orchestrator/federation.html", context)
