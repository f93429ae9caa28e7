"""The datasite's one HTTP client to its orchestrator: joining, heartbeats, round uploads, the
secure phases, the he aggregate. One place for timeouts, retries and errors.

Retries: a GET is idempotent and is retried while the orchestrator is unreachable or failing
(5xx). A POST is retried only where the protocol makes a repeat safe: the caller passes a
deadline (``until``), and the orchestrator answers a repeat with 409 "... already ...", which
then counts as delivered (an earlier attempt arrived and only its answer was lost). Every
failure is one :class:`OrchestratorError`: refused (``http_status`` set) or unreachable.

Every request carries this node's signed audit head (:mod:`audit.heads`);
:data:`ORCHESTRATOR_PEERS` tells the audit layer that the joined orchestrator is its peer.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import httpx

from audit.heads import add_head_header
from audit.peers import Peer, PeerUnreachable
from common.errors import ServiceError
from datasite.models import OrchestratorLink

log = logging.getLogger(__name__)
ORCHESTRATOR_ACCOUNT = "node.orchestrator"  # the account the orchestrator calls this site as


class OrchestratorError(ServiceError):
    """A call to the orchestrator failed: refused (``http_status``) or unreachable (None)."""

    status = 502

    def __init__(self, method: str, path: str, http_status: int | None, detail: str):
        where = f"{method} {path}"
        super().__init__(
            f"{where}: HTTP {http_status}: {detail}"
            if http_status is not None
            else f"{where}: the orchestrator is unreachable ({detail})"
        )
        self.http_status, self.detail = http_status, detail

    @property
    def refused(self) -> bool:
        """The orchestrator answered with a client error (retrying will not help)."""
        return self.http_status is not None and self.http_status < 500


def joined_link() -> OrchestratorLink:
    """The orchestrator this site joined; ``ServiceError`` when it joined none."""
    link = OrchestratorLink.objects.first()
    if link is None:
        raise ServiceError("this datasite has not joined an orchestrator")
    return link


def orchestrator_actor() -> str:
    """The orchestrator as an actor of the audit trail."""
    link = OrchestratorLink.objects.first()
    return f"node:{link.name}" if link else "node:orchestrator"


class OrchestratorClient:
    """Calls to ``url`` (the orchestrator's base URL plus an optional path prefix)."""

    def __init__(self, url: str, token: str, *, timeout: float = 300.0, pause: float = 0.5):
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            event_hooks={"request": [add_head_header]},
        )
        self.pause = pause  # seconds between retries

    @classmethod
    def joined(cls, prefix: str = "", **options) -> OrchestratorClient:
        """A client of the orchestrator this site joined, for paths under ``prefix``."""
        link = joined_link()
        return cls(f"{link.url}{prefix}", link.token, **options)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, path: str, *, until: float | None = None) -> httpx.Response:
        """GET ``path``; retried until ``until`` (a ``time.monotonic()`` deadline), or once."""
        return self._request("GET", path, until)

    def post(self, path: str, *, until: float | None = None, **kwargs) -> httpx.Response:
        """POST ``path`` once; with ``until``, retried until then (see the module docstring)."""
        return self._request("POST", path, until, **kwargs)

    def _request(self, method: str, path: str, until: float | None, **kwargs) -> httpx.Response:
        retried = False
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                log.info("%s %s failed: %s", method, path, exc)
                error = OrchestratorError(method, path, None, exc.__class__.__name__)
                error.__cause__ = exc
            else:
                if response.is_success:
                    return response
                detail = _detail(response)
                if retried and method == "POST" and response.status_code == 409 and " already " in detail:
                    log.info("%s %s had arrived before: %s", method, path, detail)
                    return response
                error = OrchestratorError(method, path, response.status_code, detail)
                if error.refused:
                    raise error
            if until is None and (method != "GET" or retried):
                raise error
            if until is not None:
                if time.monotonic() + self.pause >= until:
                    raise error
                time.sleep(self.pause)
            retried = True


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except (ValueError, AttributeError):
        return response.text[:300]


def _orchestrator_heads(link: OrchestratorLink) -> dict:
    try:
        with OrchestratorClient(link.url, link.token, timeout=30.0) as client:
            return client.get("/api/audit/heads/mine").json()
    except OrchestratorError as exc:
        raise PeerUnreachable(str(exc)) from exc


class OrchestratorPeers:
    """The datasite's peer for :mod:`audit.peers`: the orchestrator it joined."""

    @staticmethod
    def _peer(link: OrchestratorLink) -> Peer:
        return Peer(f"orchestrator:{link.name}", link.signing_key, partial(_orchestrator_heads, link))

    def peer_for(self, user: Any) -> Peer | None:
        if user.get_username() != ORCHESTRATOR_ACCOUNT:
            return None
        link = OrchestratorLink.objects.first()
        return self._peer(link) if link else None

    def peers(self) -> list[Peer]:
        return [self._peer(link) for link in OrchestratorLink.objects.all()[:1]]


ORCHESTRATOR_PEERS = OrchestratorPeers()
