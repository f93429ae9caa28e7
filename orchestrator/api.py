"""Orchestrator REST endpoints: federation membership."""

from django.http import HttpRequest
from ninja import Router
from ninja.errors import HttpError

from orchestrator.federation import FederationError, accept_join, record_heartbeat
from orchestrator.models import Datasite
from webapp.api import require_role, this_node
from webapp.protocol import DatasiteOut, Heartbeat, JoinRequest, JoinResponse
from webapp.roles import NODE_ADMIN, PEER_NODE, RESEARCHER

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
            name=s.name, url=s.url, status=s.status,
            joined_at=s.joined_at.isoformat() if s.joined_at else None,
            last_heartbeat=s.last_heartbeat.isoformat() if s.last_heartbeat else None,
            signing_key=s.signing_key, kex_key=s.kex_key,
        )
        for s in Datasite.objects.all()
    ]


routers = [("/federation", federation)]
