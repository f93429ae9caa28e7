"""HTTP calls from the orchestrator to a datasite, with the token the site gave at join.

Every orchestrator→site call is a named method of :class:`SiteClient`. Each method sets its
own timeout; only idempotent calls (GET) are retried, once, on a broken connection (not on
a timeout); every failure is a :class:`SiteUnreachable` (status 0: no answer, else the
site's HTTP status and its ``detail``). Every request carries this node's signed audit head
(:mod:`audit.heads`); :data:`SITE_PEERS` tells the audit layer which datasites are peers.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx

from audit.heads import add_head_header
from audit.peers import Peer, PeerUnreachable
from orchestrator.models import Datasite

TIMEOUT = 30.0
SLOW = 600.0  # statistics, initial weights, decrypting a sum: the site computes first


class SiteUnreachable(Exception):
    """The site did not answer (``status`` 0), or refused (its HTTP status)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class SiteClient:
    """A session with one datasite's API: ``with SiteClient(site) as client: client.stats(...)``."""

    def __init__(self, site: Datasite):
        self.site = site
        self.http = httpx.Client(
            base_url=f"{site.url}/api",
            timeout=TIMEOUT,
            headers={"Authorization": f"Bearer {site.callback_token}"},
            event_hooks={"request": [add_head_header]},
        )

    def __enter__(self) -> SiteClient:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def _call(self, method: str, path: str, ok=(200, 201, 202), **kwargs) -> httpx.Response:
        # only an idempotent call is sent twice, and only when the connection broke (the site
        # may close an idle keep-alive connection just as the request goes out on it)
        attempts = 2 if method == "GET" else 1
        for attempt in range(attempts):
            try:
                response = self.http.request(method, path, **kwargs)
                break
            except httpx.HTTPError as exc:
                broken = isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException)
                if not (broken and attempt + 1 < attempts):
                    raise SiteUnreachable(f"{self.site.name}: {exc.__class__.__name__}: {exc}") from exc
        if response.status_code not in ok:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text[:300]
            raise SiteUnreachable(
                f"{self.site.name}: HTTP {response.status_code}: {detail}", response.status_code
            )
        return response

    # ------------------------------------------------------------------------- federation, studies

    def datasets(self) -> list[dict]:
        return self._call("GET", "/datasets").json()

    def send_code_request(self, body: dict) -> dict:
        return self._call("POST", "/code-requests", ok=(201, 409), json=body).json()

    def code_request(self, study: str) -> dict:
        return self._call("GET", f"/code-requests/{study}").json()

    def stats(self, study: str) -> dict:
        return self._call("POST", f"/studies/{study}/stats", timeout=SLOW).json()

    def initial_weights(self, study: str, norm_stats: dict) -> bytes:
        return self._call(
            "POST", f"/studies/{study}/init", data={"norm_stats": json.dumps(norm_stats)}, timeout=SLOW
        ).content

    def assign(self, study: str, round_number: int, assignment: dict, weights: bytes) -> dict:
        return self._call(
            "POST",
            f"/studies/{study}/rounds/{round_number}",
            timeout=300,
            data={"assignment": json.dumps(assignment)},
            files={"weights": ("global.safetensors", weights, "application/octet-stream")},
        ).json()

    def audit_heads(self) -> dict:
        """The audit heads of this orchestrator that the site kept (``verify_audit --peers``)."""
        return self._call("GET", "/audit/heads/mine").json()

    # ------------------------------------------------------------------------- secure aggregation

    def secure_stats(self, study: str) -> dict:
        """Start the site's statistics session; it answers the layout of its moments."""
        return self._call("POST", f"/secure/studies/{study}/stats", timeout=SLOW).json()

    def he_statement(self, study: str) -> dict:
        """The site's signed X25519 key statement for the he key ceremony."""
        return self._call("POST", f"/secure/studies/{study}/he/statement", timeout=60).json()

    def he_ceremony(self, study: str, statements: dict) -> dict:
        """Ask the key-holding site to make the CKKS key and seal it to the other sites."""
        return self._call(
            "POST", f"/secure/studies/{study}/he/ceremony", json={"recipients": statements}, timeout=300
        ).json()

    def he_key(self, study: str, body: dict) -> None:
        """Deliver a sealed CKKS key envelope."""
        self._call("POST", f"/secure/studies/{study}/he/key", json=body, timeout=120)

    def he_decrypt(self, study: str, round_number: int, body: dict) -> bytes:
        """Ask a key-holding site to decrypt a round's aggregate; the flooded sum (safetensors)."""
        return self._call(
            "POST", f"/secure/studies/{study}/rounds/{round_number}/he/decrypt", json=body, timeout=SLOW
        ).content


def site_peer(site: Datasite) -> Peer:
    """A joined datasite as the audit layer sees it: name, pinned key, how to ask it."""
    return Peer(f"datasite:{site.name}", site.signing_key, partial(_site_heads, site))


def _site_heads(site: Datasite) -> dict:
    try:
        with SiteClient(site) as client:
            return client.audit_heads()
    except SiteUnreachable as exc:
        raise PeerUnreachable(str(exc)) from exc


class SitePeers:
    """The orchestrator's peers for :mod:`audit.peers`: its joined datasites with a pinned key."""

    @staticmethod
    def _joined():
        return Datasite.objects.filter(status=Datasite.Status.JOINED).exclude(signing_key="")

    def peer_for(self, user: Any) -> Peer | None:
        site = self._joined().filter(account=user).first()
        return site_peer(site) if site else None

    def peers(self) -> list[Peer]:
        return [site_peer(site) for site in self._joined()]


SITE_PEERS = SitePeers()
