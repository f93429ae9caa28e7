"""Endpoints of the aggregation modes at a datasite (``/api/secure/...``), called by the
orchestrator: the secure statistics session, and each mode's own endpoints
(:func:`datasite.modes.routers`, e.g. the he key ceremony and decryption)."""

from django.http import HttpRequest
from ninja import Router, Status

from common.api import require_role
from common.roles import PEER_NODE
from datasite import modes
from datasite.studies import approved_request

router = Router(tags=["secure aggregation"])


@router.post("/studies/{study}/stats", response={202: dict})
def start_stats(request: HttpRequest, study: str):
    """Start this site's part of the secure statistics sum; answers the moments' layout only."""
    require_role(request, PEER_NODE)
    approved = approved_request(study)
    return Status(202, modes.of_request(approved).start_stats(approved))


for mode_router in modes.routers():
    router.add_router("", mode_router)
