"""Secure-aggregation endpoints of a datasite (``/api/secure/...``), called by the orchestrator."""

from django.http import HttpRequest
from ninja import Router, Status
from ninja.errors import HttpError

from datasite import secure_rounds, services
from webapp.api import require_role
from webapp.roles import PEER_NODE

router = Router(tags=["secure aggregation"])


@router.post("/studies/{study}/stats", response={202: dict})
def start_stats(request: HttpRequest, study: str):
    """Start this site's part of the secure statistics sum; answers the moments' layout only."""
    require_role(request, PEER_NODE)
    try:
        return Status(202, secure_rounds.start_stats(study))
    except services.ServiceError as exc:
        raise HttpError(exc.status, str(exc)) from exc
