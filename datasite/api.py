"""Datasite REST endpoints: datasets, consent, code requests, approval, rounds."""

import json

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from ninja import File, Form, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile
from pydantic import Field, ValidationError

from common.api import require_role
from common.protocol import PURPOSE_PATTERN, CodeRequestIn, CodeRequestOut, Decision
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN, PEER_NODE
from datasite import code_requests, modes, preparation, rounds
from datasite.consent import record_consent
from datasite.datasets import public_dataset, register_dataset
from datasite.models import Dataset, RoundRun
from datasite.secure_api import router as secure_router
from datasite.studies import latest_request
from datasite.tasks import enqueue_round

router = Router(tags=["datasite"])
STUDY = r"^[0-9a-f]{32}$"


class DatasetIn(Schema):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    root: str = Field(min_length=1, max_length=1000)
    epsilon_max: float = Field(gt=0, le=1000)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class ConsentIn(Schema):
    contributor: str = Field(min_length=1, max_length=100)
    purpose: str = Field(default="policy-training", pattern=PURPOSE_PATTERN)
    given: bool
    evidence: str = Field(default="", max_length=500)


class RevokeIn(Schema):
    reason: str = Field(min_length=1, max_length=2000)


@router.get("/datasets", response=list[dict])
def datasets(request: HttpRequest):
    """Schema, counts, statistics shape and a synthetic mock of each dataset: no private values."""
    require_role(request, PEER_NODE, DATA_OWNER, NODE_ADMIN, COMPLIANCE_OFFICER)
    return [public_dataset(d) for d in Dataset.objects.all()]


@router.post("/datasets", response={201: dict})
def register(request: HttpRequest, body: DatasetIn):
    require_role(request, DATA_OWNER, NODE_ADMIN)
    ds = register_dataset(body.name, body.root, body.epsilon_max, body.delta, request.user)
    return Status(201, public_dataset(ds))


@router.post("/consents", response={201: dict})
def consent(request: HttpRequest, body: ConsentIn):
    require_role(request, DATA_OWNER)
    event = record_consent(body.contributor, body.purpose, body.given, body.evidence, request.user)
    return Status(
        201,
        {
            "contributor": event.contributor,
            "purpose": event.purpose,
            "given": event.given,
            "at": event.at.isoformat(),
        },
    )


@router.post("/code-requests", response={201: CodeRequestOut})
def receive(request: HttpRequest, body: CodeRequestIn):
    """The orchestrator delivers a study's code and plan for review."""
    require_role(request, PEER_NODE)
    return Status(201, code_requests.describe(code_requests.receive_code_request(body)))


@router.get("/code-requests/{study}", response=CodeRequestOut)
def code_request(request: HttpRequest, study: str):
    require_role(request, PEER_NODE, DATA_OWNER, COMPLIANCE_OFFICER)
    return code_requests.describe(latest_request(study))


@router.post("/code-requests/{study}/approve", response=CodeRequestOut)
def approve(request: HttpRequest, study: str, body: Decision):
    """Approve the latest version: pins its code hash and plan and reserves the budget."""
    require_role(request, DATA_OWNER)
    req = latest_request(study)
    return code_requests.describe(
        code_requests.decide(req, request.user, True, body.code_sha256, body.reason, body.plan_sha256)
    )


@router.post("/code-requests/{study}/deny", response=CodeRequestOut)
def deny(request: HttpRequest, study: str, body: Decision):
    require_role(request, DATA_OWNER)
    req = latest_request(study)
    return code_requests.describe(
        code_requests.decide(req, request.user, False, body.code_sha256, body.reason, body.plan_sha256)
    )


@router.post("/code-requests/{study}/revoke", response=CodeRequestOut)
def revoke(request: HttpRequest, study: str, body: RevokeIn):
    require_role(request, DATA_OWNER)
    return code_requests.describe(code_requests.revoke(latest_request(study), request.user, body.reason))


@router.post("/studies/{study}/stats", response=dict)
def stats(request: HttpRequest, study: str):
    """This site's normalization statistics over its training episodes, where the study's mode
    lets them leave in the clear (plain mode)."""
    require_role(request, PEER_NODE)
    return modes.of_request(latest_request(study)).release_stats(study)


@router.post("/studies/{study}/init")
def init(request: HttpRequest, study: str, norm_stats: Form[str]):
    """The recipe's seeded, data-free initial weights as safetensors."""
    require_role(request, PEER_NODE)
    try:
        parsed = json.loads(norm_stats)
    except json.JSONDecodeError as exc:
        raise HttpError(400, "norm_stats must be JSON") from exc
    data = preparation.initial_weights(study, parsed)
    return HttpResponse(data, content_type="application/octet-stream")


@router.post("/studies/{study}/rounds/{round_number}", response={202: dict})
def assign(
    request: HttpRequest, study: str, round_number: int, assignment: Form[str], weights: File[UploadedFile]
):
    """A round assignment (JSON) with the global weights (safetensors); runs as a task."""
    require_role(request, PEER_NODE)
    parsed = rounds.validate_assignment(assignment)
    if parsed.study != study or parsed.round != round_number:
        raise HttpError(400, "the assignment's study and round do not match the URL")
    try:
        run, start = rounds.accept_assignment(parsed, weights.read())
    except ValidationError as exc:
        raise HttpError(400, str(exc)) from exc
    if start:  # a done run re-uploads its stored result; nothing trains twice
        transaction.on_commit(lambda: enqueue_round(run.pk))
    return Status(202, {"status": run.status, "attempts": run.attempts})


@router.get("/studies/{study}/rounds/{round_number}", response=dict)
def round_status(request: HttpRequest, study: str, round_number: int):
    require_role(request, PEER_NODE, DATA_OWNER)
    run = RoundRun.objects.filter(study=study, round=round_number).first()
    if run is None:
        raise HttpError(404, "no such round at this site")
    return {"status": run.status, "attempts": run.attempts, "error": run.error}


routers = [("", router), ("/secure", secure_router)]
