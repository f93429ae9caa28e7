"""The data owner's pages at a datasite: code requests, datasets, consent.

Data owners decide (approve, deny, revoke) and record consent; compliance officers may read
every page; node admins may read the dataset pages. Views are thin: services change state,
forms validate, and the small ``_…`` helpers below only shape what the templates show.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, JsonLexer, PythonLexer

from common.protocol import Plan
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN, has_role, role_required
from datasite import budget, plots, services
from datasite.forms import ConsentForm, ConsentImportForm, DecisionForm, RevokeForm, known_contributors
from datasite.models import CodeRequest, ConsentEvent, Dataset, LedgerEntry
from privacy.accounting import Mechanism, epsilon

VIEWERS = (DATA_OWNER, COMPLIANCE_OFFICER)
DATASET_VIEWERS = (DATA_OWNER, COMPLIANCE_OFFICER, NODE_ADMIN)
DEFAULT_PURPOSE = "policy-training"
AGGREGATION = {
    "secagg": "secure aggregation (pairwise masking): the orchestrator sees only the sum",
    "he": "homomorphic encryption (CKKS): the orchestrator sees ciphertexts and the sum; "
    "every participating site holds the decryption key",
    "plain": "plain: the orchestrator sees this site's individual update",
}
LEROBOT_FEATURES = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
_FORMATTER = HtmlFormatter(cssclass="highlight")


# ----------------------------------------------------------------------------- presentation helpers


def _eps(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞ (no DP noise)" if math.isinf(value) else f"{value:.3g}"


def _highlight(text: str, lexer: Any) -> SafeString:
    return mark_safe(highlight(text, lexer, _FORMATTER))  # noqa: S308 - Pygments escapes its input


def _code_text(code: dict[str, Any]) -> tuple[str, Any]:
    """The bundle as people read it: pretty JSON of recipe + config, or a module's Python source
    followed by its other (hashed) settings as comments, so that diffs show them too."""
    if code.get("kind") == "module" and isinstance(code.get("source"), str):
        settings = [k for k in ("entry", "base_recipe", "base_config", "config") if k in code]
        if not settings:
            return code["source"], PythonLexer()
        lines = [f"#   {k} = {json.dumps(code[k], sort_keys=True, ensure_ascii=False)}" for k in settings]
        header = "# ---- bundle settings (approved and hashed with the source above) ----"
        return "\n".join([code["source"].rstrip("\n"), "", header, *lines]) + "\n", PythonLexer()
    shown = {
        "kind": code.get("kind", "recipe"),
        "recipe": code.get("recipe"),
        "config": code.get("config", {}),
    }
    return json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False), JsonLexer()


def _diff(old: str, new: str, old_name: str, new_name: str) -> SafeString | None:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name, lineterm=""))
    return _highlight("\n".join(lines) + "\n", DiffLexer()) if lines else None


def _plan_rows(plan: Plan, raw: dict[str, Any], sites: list[str]) -> list[tuple[str, str]]:
    dp = plan.dp
    target = (raw.get("dp") or {}).get("epsilon") or (raw.get("dp") or {}).get("target_epsilon")
    unit = (
        "episode (one whole demonstration is protected)"
        if dp.unit == "episode"
        else "frame (weaker: one demonstration is not protected as a whole)"
    )
    rows = [
        ("Rounds", str(plan.rounds)),
        ("Local steps per round", str(plan.local_steps)),
        ("Batch size", str(plan.batch_size)),
        ("Learning rate", f"{plan.lr:g}"),
        ("Strategy", plan.strategy),
        ("FedProx μ", f"{plan.mu:g}"),
        ("Differential privacy", "on" if dp.enabled else "OFF: no noise is added, ε is unbounded"),
        (
            "DP ε target",
            f"{target:g}" if isinstance(target, int | float) else "not stated (see projected ε below)",
        ),
        ("DP δ", f"{dp.delta:g}"),
        ("Clip norm", f"{dp.clip_norm:g}"),
        ("Noise multiplier σ", f"{dp.noise_multiplier:g}"),
        ("Privacy unit", unit),
        ("Frames per episode", str(dp.frames_per_episode)),
        ("Aggregation", AGGREGATION.get(plan.aggregation, plan.aggregation)),
        ("Robust aggregation", plan.robust.describe()),
        ("Sites", ", ".join(sites) or "—"),
        ("Minimum sites", str(plan.min_sites)),
        ("Purpose", plan.purpose),
        ("Held-out fraction", f"{plan.holdout_fraction:g}"),
        ("Seed", str(plan.seed)),
    ]
    if plan.server:
        rows.insert(6, ("Server settings", json.dumps(plan.server, sort_keys=True)))
    return rows


def _bar(epsilon_max: float, spent: float, committed: float, projected: float | None = None) -> list[dict]:
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


def _coverage(ds: Dataset, purpose: str, allowed: set[str] | None = None) -> Coverage:
    who = ds.contributors()
    allowed = services.consenting(purpose) if allowed is None else allowed
    people = set(who.values())
    return Coverage(
        purpose, len(who), sum(1 for c in who.values() if c in allowed), len(people), len(people & allowed)
    )


@dataclass
class Assessment:
    """One dataset as a code request would use it: budget, projection and consent."""

    dataset: Dataset
    view: budget.BudgetView
    coverage: Coverage
    training: int
    holdout: int
    study_alone: float | None
    projected: float | None

    @property
    def fits(self) -> bool:
        return self.projected is None or self.projected <= self.dataset.epsilon_max

    @property
    def bar(self) -> list[dict]:
        return _bar(self.dataset.epsilon_max, self.view.spent, self.view.committed, self.projected)

    def shown(self) -> dict[str, str]:
        return {
            "spent": _eps(self.view.spent),
            "reserved": _eps(self.view.reserved),
            "committed": _eps(self.view.committed),
            "max": f"{self.dataset.epsilon_max:g}",
            "delta": f"{self.dataset.delta:g}",
            "projected": _eps(self.projected),
            "alone": _eps(self.study_alone),
        }


def _assess(cr: CodeRequest, plan: Plan) -> list[Assessment]:
    pending = cr.status == CodeRequest.Status.PENDING
    projections = services.projection(cr) if pending else {}
    allowed = services.consenting(plan.purpose)
    out = []
    for ds in cr.datasets.all():
        split = services.split_episodes(ds, plan)
        try:
            mech = budget.round_mechanism(plan, services.training_units(ds, plan, split))
            whole = Mechanism(mech.noise_multiplier, mech.sample_rate, mech.steps * plan.rounds, mech.unit)
            alone = epsilon([whole], ds.delta)
        except budget.BudgetError:
            alone = math.inf
        out.append(
            Assessment(
                ds,
                budget.view(ds),
                _coverage(ds, plan.purpose, allowed),
                len(split.train),
                len(split.holdout),
                alone,
                projections.get(ds.name) if pending else None,
            )
        )
    return out


def _request_context(request: HttpRequest, cr: CodeRequest, against: str | None = None) -> dict[str, Any]:
    plan = services.plan_of(cr)
    code_text, lexer = _code_text(cr.code)
    versions = list(CodeRequest.objects.filter(study=cr.study).order_by("-version"))
    previous = [v for v in versions if v.version < cr.version]
    base = next((v for v in previous if str(v.version) == against), previous[0] if previous else None)
    code_diff = plan_diff = None
    if base is not None:
        old_code, _ = _code_text(base.code)
        code_diff = _diff(old_code, code_text, f"v{base.version} code", f"v{cr.version} code")
        plan_diff = _diff(
            json.dumps(base.plan, indent=2, sort_keys=True),
            json.dumps(cr.plan, indent=2, sort_keys=True),
            f"v{base.version} plan",
            f"v{cr.version} plan",
        )
    return {
        "cr": cr,
        "plan_rows": _plan_rows(plan, cr.plan, list(cr.sites)),
        "code_html": _highlight(code_text, lexer),
        "versions": versions,
        "latest": versions[0],
        "previous": previous,
        "base": base,
        "code_diff": code_diff,
        "plan_diff": plan_diff,
        "assessments": _assess(cr, plan),
        "purpose": plan.purpose,
        "is_owner": has_role(request.user, DATA_OWNER),
        "rounds": cr.rounds.order_by("round"),
    }


def _dataset_rows(ds: Dataset) -> dict[str, Any]:
    view = budget.view(ds)
    return {
        "ds": ds,
        "view": view,
        "bar": _bar(ds.epsilon_max, view.spent, view.committed),
        "contributors": len(set(ds.contributors().values())),
        "shown": {
            "spent": _eps(view.spent),
            "reserved": _eps(view.reserved),
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


def _purposes() -> list[str]:
    """Purposes anyone asked or consented for, the default first."""
    asked = {(p or {}).get("purpose") for p in CodeRequest.objects.values_list("plan", flat=True)}
    found = set(ConsentEvent.objects.values_list("purpose", flat=True).distinct()) | asked
    return [DEFAULT_PURPOSE, *sorted(p for p in found if p and p != DEFAULT_PURPOSE)]


def _consent_context(
    request: HttpRequest, form: ConsentForm | None = None, import_form: ConsentImportForm | None = None
) -> dict[str, Any]:
    purposes = _purposes()
    membership: dict[str, dict[str, int]] = {}
    for ds in Dataset.objects.all():
        for who in ds.contributors().values():
            membership.setdefault(who, {}).setdefault(ds.name, 0)
            membership[who][ds.name] += 1
    latest: dict[tuple[str, str], ConsentEvent] = {}
    history: dict[str, list[ConsentEvent]] = {}
    for event in ConsentEvent.objects.select_related("recorded_by").order_by("at", "id"):
        latest[(event.contributor, event.purpose)] = event
        history.setdefault(event.contributor, []).insert(0, event)
    rows = [
        {
            "contributor": who,
            "datasets": sorted(membership.get(who, {}).items()),
            "cells": [latest.get((who, p)) for p in purposes],
            "history": history.get(who, []),
        }
        for who in sorted(set(membership) | set(history))
    ]
    return {
        "purposes": purposes,
        "rows": rows,
        "known": sorted(known_contributors()),
        "is_owner": has_role(request.user, DATA_OWNER),
        "form": form or ConsentForm(initial={"purpose": DEFAULT_PURPOSE}),
        "import_form": import_form or ConsentImportForm(),
    }


def _png_response(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


# ----------------------------------------------------------------------------- code requests


@require_GET
@role_required(*VIEWERS)
def request_list(request: HttpRequest) -> HttpResponse:
    """Pending code requests first, then the decided ones."""
    requests = list(CodeRequest.objects.prefetch_related("datasets").order_by("-received_at"))
    pending = [r for r in requests if r.status == CodeRequest.Status.PENDING]
    decided = [r for r in requests if r.status != CodeRequest.Status.PENDING]
    return render(request, "datasite/request_list.html", {"pending": pending, "decided": decided})


@require_GET
@role_required(*VIEWERS)
def request_detail(request: HttpRequest, study: str, version: int | None = None) -> HttpResponse:
    """A code request (the latest version unless one is named): code, diff, plan, budget, consent."""
    cr = _get_request(study, version)
    context = _request_context(request, cr, request.GET.get("against"))
    context["decision_form"] = DecisionForm(
        initial={"code_sha256": cr.code_sha256, "plan_sha256": cr.plan_sha256}
    )
    context["revoke_form"] = RevokeForm()
    return render(request, "datasite/request_detail.html", context)


def _get_request(study: str, version: int | None) -> CodeRequest:
    found = CodeRequest.objects.filter(study=study)
    found = found.order_by("-version")[:1] if version is None else found.filter(version=version)
    return get_object_or_404(found)


@role_required(DATA_OWNER)
@require_POST
def decide(request: HttpRequest, study: str, version: int) -> HttpResponse:
    """Approve or deny one version; refused when the code or plan shown is not the current one."""
    cr = _get_request(study, version)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        context = _request_context(request, cr)
        context.update(decision_form=form, revoke_form=RevokeForm())
        messages.error(request, "Nothing was decided: see the message below the decision form.")
        return render(request, "datasite/request_detail.html", context, status=400)
    here = reverse("datasite:request-version", args=[cr.study, cr.version])
    try:
        cr = services.decide(
            cr, request.user, form.approve, form.cleaned_data["code_sha256"], form.cleaned_data["reason"],
            plan_sha256_seen=form.cleaned_data["plan_sha256"],
        )
    except services.ServiceError as exc:
        messages.error(request, _refusal(cr, exc))
        return redirect(here)
    if form.approve:
        committed = ", ".join(
            f"{ds.name}: ε committed {_eps(budget.view(ds).committed)} of {ds.epsilon_max:g}"
            for ds in cr.datasets.all()
        )
        messages.success(
            request,
            f"Approved “{cr.title}” (v{cr.version}). The code is pinned at SHA-256 "
            f"{cr.code_sha256[:12]}… and its privacy budget is reserved ({committed}).",
        )
    else:
        messages.success(
            request, f"Denied “{cr.title}” (v{cr.version}). The researcher will see your reason."
        )
    return redirect(here)


def _refusal(cr: CodeRequest, exc: services.ServiceError) -> str:
    latest = CodeRequest.objects.filter(study=cr.study).order_by("-version").first()
    text = f"Not saved: {exc}."
    if latest is not None and latest.version != cr.version:
        text += f" A newer version (v{latest.version}) of this study arrived: review it instead."
    return text


@role_required(DATA_OWNER)
@require_POST
def revoke(request: HttpRequest, study: str, version: int) -> HttpResponse:
    """Revoke an approval: no further rounds, the unused reservation is released."""
    cr = _get_request(study, version)
    form = RevokeForm(request.POST)
    if not form.is_valid():
        context = _request_context(request, cr)
        context.update(
            revoke_form=form,
            decision_form=DecisionForm(
                initial={"code_sha256": cr.code_sha256, "plan_sha256": cr.plan_sha256}
            ),
        )
        messages.error(request, "Nothing was revoked: see the message below the revoke form.")
        return render(request, "datasite/request_detail.html", context, status=400)
    try:
        cr = services.revoke(cr, request.user, form.cleaned_data["reason"])
    except services.ServiceError as exc:
        messages.error(request, _refusal(cr, exc))
    else:
        messages.success(
            request,
            f"Revoked “{cr.title}” (v{cr.version}): no further rounds will run here, "
            "and the budget it had not used is released.",
        )
    return redirect("datasite:request-version", cr.study, cr.version)


# ----------------------------------------------------------------------------- datasets


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
        "coverage": [_coverage(ds, p) for p in _purposes()],
        "ledger": list(ds.ledger.order_by("-at", "-id")[:50]),
        "requests": ds.code_requests.order_by("-received_at"),
    }
    return render(request, "datasite/dataset_detail.html", context)


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_epsilon_png(request: HttpRequest, name: str) -> HttpResponse:
    ds = get_object_or_404(Dataset, name=name)
    points = plots.epsilon_timeline(LedgerEntry.objects.filter(dataset=ds).order_by("at", "id"), ds.delta)
    return _png_response(
        plots.epsilon_png(
            points, ds.epsilon_max, f"{ds.name}: ε over time (δ = {ds.delta:g})", timezone.now()
        )
    )


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_mock_png(request: HttpRequest, name: str) -> HttpResponse:
    ds = get_object_or_404(Dataset, name=name)
    return _png_response(plots.mock_curves_png(ds.mock))


@require_GET
@role_required(*DATASET_VIEWERS)
def dataset_mock_images_png(request: HttpRequest, name: str) -> HttpResponse:
    ds = get_object_or_404(Dataset, name=name)
    data = plots.mock_images_png(ds.mock)
    if data is None:
        return HttpResponse("this dataset's preview carries no images", status=404, content_type="text/plain")
    return _png_response(data)


# ----------------------------------------------------------------------------- consent


@require_GET
@role_required(*VIEWERS)
def consent(request: HttpRequest) -> HttpResponse:
    """Every contributor's current consent per purpose, with its history, and the forms."""
    return render(request, "datasite/consent.html", _consent_context(request))


@role_required(DATA_OWNER)
@require_POST
def consent_record(request: HttpRequest) -> HttpResponse:
    form = ConsentForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Consent was not recorded: see the message in the form.")
        return render(request, "datasite/consent.html", _consent_context(request, form=form), status=400)
    d = form.cleaned_data
    try:
        services.record_consent(d["contributor"], d["purpose"], d["given"], d["evidence"], request.user)
    except services.ServiceError as exc:
        form.add_error(None, str(exc))
        return render(request, "datasite/consent.html", _consent_context(request, form=form), status=400)
    state = "given" if d["given"] else "withdrawn"
    note = "" if d["given"] else " Its episodes are left out of every later round of every study."
    messages.success(
        request, f"Consent {state} for {d['contributor']} ({d['purpose']}), evidence “{d['evidence']}”.{note}"
    )
    return redirect(reverse("datasite:consent") + f"#c-{d['contributor']}")


@role_required(DATA_OWNER)
@require_POST
def consent_import(request: HttpRequest) -> HttpResponse:
    """Import a CSV of consent events: every line is checked first, then all are saved or none."""
    form = ConsentImportForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, "Nothing was imported: see the lines named below the import form.")
        return render(
            request, "datasite/consent.html", _consent_context(request, import_form=form), status=400
        )
    rows = form.cleaned_data["rows"]
    try:
        with transaction.atomic():
            for row in rows:
                try:
                    services.record_consent(
                        row.contributor, row.purpose, row.given, row.evidence, request.user
                    )
                except services.ServiceError as exc:
                    raise services.ServiceError(f"line {row.line}: {exc}") from exc
    except services.ServiceError as exc:
        form.add_error("file", f"Nothing was imported: {exc}")
        return render(
            request, "datasite/consent.html", _consent_context(request, import_form=form), status=400
        )
    given = sum(r.given for r in rows)
    messages.success(
        request, f"Imported {len(rows)} consent records ({given} given, {len(rows) - given} withdrawn)."
    )
    return redirect("datasite:consent")
