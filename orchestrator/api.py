"""Orchestrator REST endpoints: federation membership, studies, round uploads."""

from django.http import FileResponse, HttpRequest
from ninja import Form, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import Field, ValidationError

from common.api import require_role, this_node
from common.protocol import CodeBundle, DatasiteOut, Heartbeat, JoinRequest, JoinResponse, Plan, RoundUpload
from common.roles import NODE_ADMIN, PEER_NODE, RESEARCHER, has_role
from orchestrator import services
from orchestrator.federation import FederationError, accept_join, record_heartbeat
from orchestrator.models import Datasite, Study
from orchestrator.sites import SiteClient, SiteUnreachable

federation = Router(tags=["federation"])


@federation.post("/join", response=JoinResponse)
def join(request: HttpRequest, body: JoinRequest) -> JoinResponse:
    """A datasite presents its invitation token, URL and public keys."""
    require_role(request, PEER_NODE)
    try:
        accept_join(request.user, body)
    except FederationError as exc:
        raise HttpError(403, str(exc)) from exc
    return JoinResponse(orchestrator=this_node())


@federation.post("/heartbeat", response=dict)
def heartbeat(request: HttpRequest, body: Heartbeat) -> dict:
    require_role(request, PEER_NODE)
    try:
        site = record_heartbeat(request.user, body.name, body.status)
    except FederationError as exc:
        raise HttpError(403, str(exc)) from exc
    return {"received": site.last_heartbeat.isoformat()}


@federation.get("/datasites", response=list[DatasiteOut])
def datasites(request: HttpRequest) -> list[DatasiteOut]:
    """Member datasites with their last heartbeat."""
    require_role(request, RESEARCHER, NODE_ADMIN)
    return [
        DatasiteOut(
            name=s.name,
            url=s.url,
            status=s.status,
            joined_at=s.joined_at.isoformat() if s.joined_at else None,
            last_heartbeat=s.last_heartbeat.isoformat() if s.last_heartbeat else None,
            signing_key=s.signing_key,
            kex_key=s.kex_key,
        )
        for s in Datasite.objects.all()
    ]


# ----------------------------------------------------------------------------- studies

studies = Router(tags=["studies"])


class StudyIn(Schema):
    title: str = Field(min_length=1, max_length=200)
    code: CodeBundle
    plan: Plan
    datasets: dict[str, str] = Field(description="site name → dataset name at that site")


@studies.post("", response={201: dict})
def propose(request: HttpRequest, body: StudyIn):
    """Propose a study: each site's data owner receives a code request to review."""
    require_role(request, RESEARCHER)
    study = services.propose(request.user, body.title, body.code, body.plan, body.datasets)
    return Status(201, services.status(study))


@studies.get("", response=list[dict])
def list_studies(request: HttpRequest):
    require_role(request, RESEARCHER, NODE_ADMIN)
    qs = Study.objects.all()
    if not has_role(request.user, NODE_ADMIN):
        qs = qs.filter(researcher=request.user)
    return [services.status(s) for s in qs]


@studies.get("/{study_id}", response=dict)
def study_status(request: HttpRequest, study_id: str):
    require_role(request, RESEARCHER, NODE_ADMIN)
    return services.status(services.get_study(study_id, request.user))


@studies.get("/{study_id}/metrics", response=list[dict])
def study_metrics(request: HttpRequest, study_id: str):
    require_role(request, RESEARCHER, NODE_ADMIN)
    return services.metrics(services.get_study(study_id, request.user))


@studies.get("/{study_id}/model")
def study_model(request: HttpRequest, study_id: str):
    """The latest global weights as safetensors."""
    require_role(request, RESEARCHER, NODE_ADMIN)
    path = services.model_path(services.get_study(study_id, request.user))
    return FileResponse(path.open("rb"), as_attachment=True, filename=f"{study_id}.safetensors")


@studies.post("/{study_id}/cancel", response=dict)
def cancel(request: HttpRequest, study_id: str):
    require_role(request, RESEARCHER, NODE_ADMIN)
    return services.status(services.cancel(services.get_study(study_id, request.user)))


@studies.post("/{study_id}/rounds/{round_number}/updates", response={201: dict})
def upload(request: HttpRequest, study_id: str, round_number: int, meta: Form[str]):
    """A site's round result: JSON metadata and, except in evaluation rounds or on failure, its
    update as the multipart file ``update`` (safetensors)."""
    require_role(request, PEER_NODE)
    site = getattr(request.user, "datasite", None)
    if site is None:
        raise HttpError(403, "only a member datasite uploads round results")
    study = Study.objects.filter(pk=study_id).first()
    limit = services.upload_limit(study) if study else 0
    if int(request.META.get("CONTENT_LENGTH") or 0) > limit + 1024 * 1024:
        raise HttpError(413, "the upload is larger than the study's model")
    try:
        parsed = RoundUpload.model_validate_json(meta)
    except ValidationError as exc:
        raise HttpError(400, f"malformed metadata: {exc.errors()[0]['msg']}") from exc
    update = request.FILES.get("update")
    data = update.read() if update is not None else None
    saved = services.receive_upload(site, study_id, round_number, parsed, data)
    return Status(201, {"received": saved.received_at.isoformat()})


@federation.get("/datasets", response=dict)
def federated_datasets(request: HttpRequest) -> dict:
    """Every joined site's datasets as the site publishes them (schema, counts, mock)."""
    require_role(request, RESEARCHER, NODE_ADMIN)
    out = {}
    for site in Datasite.objects.filter(status=Datasite.Status.JOINED):
        with SiteClient(site) as client:
            try:
                out[site.name] = client.datasets()
            except SiteUnreachable as exc:
                out[site.name] = {"error": str(exc)}
    return out


routers = [("/federation", federation), ("/studies", studies)]
