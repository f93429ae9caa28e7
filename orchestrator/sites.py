"""HTTP calls from the orchestrator to a datasite, with the token the site gave at join."""

from __future__ import annotations

import json

import httpx

from orchestrator.models import Datasite


class SiteUnreachable(Exception):
    """The site did not answer (``status`` 0), or refused (its HTTP status)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class SiteClient:
    def __init__(self, site: Datasite, timeout: float = 30.0):
        self.site = site
        self.http = httpx.Client(
            base_url=f"{site.url}/api",
            timeout=timeout,
            headers={"Authorization": f"Bearer {site.callback_token}"},
        )

    def __enter__(self) -> SiteClient:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def _call(self, method: str, path: str, ok=(200, 201, 202), **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
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

    def datasets(self) -> list[dict]:
        return self._call("GET", "/datasets").json()

    def send_code_request(self, body: dict) -> dict:
        return self._call("POST", "/code-requests", ok=(201, 409), json=body).json()

    def code_request(self, study: str) -> dict:
        return self._call("GET", f"/code-requests/{study}").json()

    def stats(self, study: str) -> dict:
        return self._call("POST", f"/studies/{study}/stats", timeout=600).json()

    def initial_weights(self, study: str, norm_stats: dict) -> bytes:
        return self._call(
            "POST", f"/studies/{study}/init", data={"norm_stats": json.dumps(norm_stats)}, timeout=600
        ).content

    def assign(self, study: str, round_number: int, assignment: dict, weights: bytes) -> dict:
        return self._call(
            "POST",
            f"/studies/{study}/rounds/{round_number}",
            timeout=300,
            data={"assignment": json.dumps(assignment)},
            files={"weights": ("global.safetensors", weights, "application/octet-stream")},
        ).json()
