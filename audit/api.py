"""``GET /api/audit/heads/mine``: the signed heads this node kept for the calling peer node."""

from django.http import HttpRequest
from ninja import Router
from ninja.errors import HttpError

from audit import peers
from common.api import require_role
from common.roles import PEER_NODE

router = Router(tags=["audit"])


@router.get("/heads/mine", response=dict)
def my_heads(request: HttpRequest) -> dict:
    """The caller's own audit heads as this node received them, lowest ``seq`` first."""
    require_role(request, PEER_NODE)
    peer = peers.peer_for(request.user)
    if peer is None:
        raise HttpError(403, "only a joined peer node has heads kept here")
    return {"peer": peer.name, "heads": [h.to_dict() for h in peers.kept_heads(peer)]}
