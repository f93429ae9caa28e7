"""Code requests at a datasite: receiving them for review, the data owner's decision, revocation.

A request pins the study's code and plan by SHA-256; approval reserves the privacy budget of
every dataset it uses in the same transaction, so concurrent approvals never overspend.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit import trail
from common.errors import Conflict, ServiceError
from common.protocol import CodeRequestIn, CodeRequestOut, bundle_sha256, plan_sha256
from datasite import budget, modes
from datasite.consent import split_episodes, training_units
from datasite.models import CodeRequest, Dataset
from datasite.orchestrator_client import orchestrator_actor
from datasite.studies import plan_of
from datasite.training.modules import ModuleCodeError, validate_source


def receive_code_request(body: CodeRequestIn) -> CodeRequest:
    """Store a code request from the orchestrator (a new version supersedes a pending one)."""
    if bundle_sha256(body.code) != body.code_sha256:
        raise ServiceError("code_sha256 does not match the code bundle")
    if body.code.kind == "module":
        try:  # a review aid, not a sandbox: the data owner's approval is the control
            validate_source(body.code.source, body.code.entry)
        except ModuleCodeError as exc:
            raise ServiceError(str(exc)) from exc
    if settings.NODE_NAME not in body.sites:
        raise ServiceError(f"this site ({settings.NODE_NAME}) is not among the study's sites")
    modes.of(body.plan).check_code_request(body)
    if len(body.datasets) != 1:
        raise ServiceError("a study uses exactly one dataset per site in this version")
    datasets = list(Dataset.objects.filter(name__in=body.datasets))
    missing = sorted(set(body.datasets) - {d.name for d in datasets})
    if missing:
        raise ServiceError(f"unknown dataset(s) at this site: {', '.join(missing)}")
    with transaction.atomic():
        if CodeRequest.objects.filter(study=body.study, version=body.version).exists():
            raise Conflict(f"study {body.study} version {body.version} was already received")
        latest = CodeRequest.objects.filter(study=body.study).aggregate(v=Max("version"))["v"]
        if latest is not None and body.version < latest:
            raise Conflict(f"version {body.version} is older than version {latest} already received")
        CodeRequest.objects.filter(study=body.study, status=CodeRequest.Status.PENDING).update(
            status=CodeRequest.Status.SUPERSEDED
        )
        request = CodeRequest.objects.create(
            study=body.study,
            version=body.version,
            title=body.title,
            researcher=body.researcher,
            code=body.code.model_dump(),
            code_sha256=body.code_sha256,
            plan=body.plan.model_dump(),
            plan_sha256=plan_sha256(body.plan),
            sites=body.sites,
            site_keys=body.site_keys,  # the peers' signing keys the data owner approves
        )
        request.datasets.set(datasets)
        trail.record(
            "code_request.received",
            orchestrator_actor(),
            f"study:{body.study}",
            {
                "version": body.version,
                "code_sha256": body.code_sha256,
                "plan_sha256": request.plan_sha256,
                "researcher": body.researcher,
                "datasets": body.datasets,
            },
        )
    return request


def projection(request: CodeRequest) -> dict[str, float]:
    """Projected ε of each dataset after this study (by composition with its ledger)."""
    plan = plan_of(request)
    out = {}
    for ds in request.datasets.all():
        split = split_episodes(ds, plan)
        try:
            mech = budget.round_mechanism(plan, training_units(ds, plan, split))
            out[ds.name] = budget.projected(ds, mech, plan.rounds)
        except budget.BudgetError:
            out[ds.name] = math.inf
    return out


def describe(request: CodeRequest) -> CodeRequestOut:
    plan = plan_of(request)
    return CodeRequestOut(
        study=request.study,
        version=request.version,
        status=request.status,
        code_sha256=request.code_sha256,
        reason=request.reason,
        decided_by=request.decided_by.get_username() if request.decided_by else None,
        decided_at=request.decided_at.isoformat() if request.decided_at else None,
        projected_epsilon={k: (v if math.isfinite(v) else -1.0) for k, v in projection(request).items()},
        episodes={ds.name: len(split_episodes(ds, plan).train) for ds in request.datasets.all()},
    )


def decide(
    request: CodeRequest,
    user,
    approve: bool,
    code_sha256: str,
    reason: str = "",
    plan_sha256_seen: str | None = None,
) -> CodeRequest:
    """Approve (pin code and plan, reserve the budget) or deny, in one transaction.

    ``code_sha256`` (and ``plan_sha256_seen`` when given) are what the data owner was shown:
    if either changed since, nothing is decided.
    """
    with transaction.atomic():
        request = CodeRequest.objects.select_for_update().get(pk=request.pk)
        if request.status != CodeRequest.Status.PENDING:
            raise Conflict(f"this request is {request.status}, not pending")
        if code_sha256 != request.code_sha256:
            raise Conflict("the code changed since it was shown to you: review the new version")
        if plan_sha256_seen is not None and plan_sha256_seen != request.plan_sha256:
            raise Conflict("the plan changed since it was shown to you: review the new version")
        if not approve and not reason.strip():
            raise ServiceError("a denial needs a reason")
        if approve:
            plan = plan_of(request)
            # lock the datasets' rows: concurrent approvals serialize here and never overspend
            for ds in Dataset.objects.select_for_update().filter(code_requests=request).order_by("pk"):
                split = split_episodes(ds, plan)
                try:
                    mech = budget.round_mechanism(plan, training_units(ds, plan, split))
                    eps = budget.reserve(ds, request.study, mech, plan.rounds)
                except budget.BudgetError as exc:
                    raise Conflict(str(exc)) from exc
                trail.record(
                    "budget.reserved",
                    user,
                    f"dataset:{ds.name}",
                    {
                        "study": request.study,
                        "mechanism": mech.to_dict(),
                        "rounds": plan.rounds,
                        "projected_epsilon": eps,
                    },
                )
        request.status = CodeRequest.Status.APPROVED if approve else CodeRequest.Status.DENIED
        request.decided_by = user
        request.decided_at = timezone.now()
        request.reason = reason
        request.save()
        trail.record(
            f"code_request.{request.status}",
            user,
            f"study:{request.study}",
            {
                "version": request.version,
                "code_sha256": request.code_sha256,
                "plan_sha256": request.plan_sha256,
                "reason": reason,
            },
        )
    return request


def revoke(request: CodeRequest, user, reason: str) -> CodeRequest:
    """Stop future rounds at this site and release the unused reservation."""
    with transaction.atomic():
        request = CodeRequest.objects.select_for_update().get(pk=request.pk)
        if request.status != CodeRequest.Status.APPROVED:
            raise Conflict(f"only an approved request can be revoked; this one is {request.status}")
        request.status = CodeRequest.Status.REVOKED
        request.reason = reason
        request.decided_by = user
        request.decided_at = timezone.now()
        request.save()
        trail.record(
            "code_request.revoked",
            user,
            f"study:{request.study}",
            {"version": request.version, "reason": reason},
        )
        for ds in request.datasets.all():
            budget.release(ds, request.study)
            trail.record("budget.released", user, f"dataset:{ds.name}", {"study": request.study})
    return request
