"""Every request from a peer node carries the peer's signed audit head: keep it (audit.peers)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit import peers
from audit.heads import HEADER


class PeerHeadMiddleware:
    """After token authentication: a request by a joined peer's account hands its head to
    :func:`audit.peers.receive_head`. The request goes on whatever the head says."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if getattr(request, "api_token", None) is not None:
            peer = peers.peer_for(request.user)
            if peer is not None:
                peers.receive_head(peer, request.headers.get(HEADER))
        return self.get_response(request)
