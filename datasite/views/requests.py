"""Code request pages: the list, a request's code, diff, plan, budget and consent, and the data
owner's decisions (approve, deny, revoke)."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, JsonLexer, PythonLexer

from common.errors import ServiceError
from common.protocol import Plan
from common.roles import DATA_OWNER, has_role, role_required
from datasite import budget, code_requests, modes
from datasite.consent import consenting, split_episodes, training_units
from datasite.forms.decisions import DecisionForm, RevokeForm
from datasite.models import CodeRequest, Dataset
from datasite.studies import plan_of
from datasite.views.display import VIEWERS, Coverage, budget_bar, consent_coverage, eps_text
from privacy.accounting import Mechanism, epsilon

_FORMATTER = HtmlFormatter(cssclass="highlight")


def _highlight(text: str, lexer: Any) -> SafeString:
    return mark_safe(highlight(text, lexer, _FORMATTER))  # noqa: S308 - Pygments escapes its input


def code_text(code: dict[str, Any]) -> tuple[str, Any]:
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
        ("Aggregation", modes.of(plan).description),
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
        return budget_bar(self.dataset.epsilon_max, self.view.spent, self.view.committed, self.projected)

    def shown(self) -> dict[str, str]:
        return {
            "spent": eps_text(self.view.spent),
            "reserved": eps_text(self.view.reserved),
            "committed": eps_text(self.view.committed),
            "max": f"{self.dataset.epsilon_max:g}",
            "delta": f"{self.dataset.delta:g}",
            "projected": eps_text(self.projected),
            "alone": eps_text(self.study_alone),
        }


def _assess(cr: CodeRequest, plan: Plan) -> list[Assessment]:
    pending = cr.status == CodeRequest.Status.PENDING
    projections = code_requests.projection(cr) if pending else {}
    allowed = consenting(plan.purpose)
    out = []
    for ds in cr.datasets.all():
        split = split_episodes(ds, plan)
        try:
            mech = budget.round_mechanism(plan, training_units(ds, plan, split))
            whole = Mechanism(mech.noise_multiplier, mech.sample_rate, mech.steps * plan.rounds, mech.unit)
            alone = epsilon([whole], ds.delta)
        except budget.BudgetError:
            alone = math.inf
        out.append(
            Assessment(
                ds,
                budget.view(ds),
                consent_coverage(ds, plan.purpose, allowed),
                len(split.train),
                len(split.holdout),
                alone,
                projections.get(ds.name) if pending else None,
            )
        )
    return out


def _request_context(request: HttpRequest, cr: CodeRequest, against: str | None = None) -> dict[str, Any]:
    plan = plan_of(cr)
    text, lexer = code_text(cr.code)
    versions = list(CodeRequest.objects.filter(study=cr.study).order_by("-version"))
    previous = [v for v in versions if v.version < cr.version]
    base = next((v for v in previous if str(v.version) == against), previous[0] if previous else None)
    code_diff = plan_diff = None
    if base is not None:
        old_code, _ = code_text(base.code)
        code_diff = _diff(old_code, text, f"v{base.version} code", f"v{cr.version} code")
        plan_diff = _diff(
            json.dumps(base.plan, indent=2, sort_keys=True),
            json.dumps(cr.plan, indent=2, sort_keys=True),
            f"v{base.version} plan",
            f"v{cr.version} plan",
        )
    return {
        "cr": cr,
        "plan_rows": _plan_rows(plan, cr.plan, list(cr.sites)),
        "code_html": _highlight(text, lexer),
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


# ----------------------------------------------------------------------------- pages


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
        cr = code_requests.decide(
            cr,
            request.user,
            form.approve,
            form.cleaned_data["code_sha256"],
            form.cleaned_data["reason"],
            plan_sha256_seen=form.cleaned_data["plan_sha256"],
        )
    except ServiceError as exc:
        messages.error(request, _refusal(cr, exc))
        return redirect(here)
    if form.approve:
        committed = ", ".join(
            f"{ds.name}: ε committed {eps_text(budget.view(ds).committed)} of {ds.epsilon_max:g}"
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


def _refusal(cr: CodeRequest, exc: ServiceError) -> str:
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
        cr = code_requests.revoke(cr, request.user, form.cleaned_data["reason"])
    except ServiceError as exc:
        messages.error(request, _refusal(cr, exc))
    else:
        messages.success(
            request,
            f"Revoked “{cr.title}” (v{cr.version}): no further rounds will run here, "
            "and the budget it had not used is released.",
        )
    return redirect("datasite:request-version", cr.study, cr.version)
