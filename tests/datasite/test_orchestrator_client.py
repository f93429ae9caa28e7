"""The datasite's orchestrator client against a real HTTP server that loses one answer."""

from __future__ import annotations

import time

import pytest

from datasite.modes.secure import SecureAbort, send
from datasite.orchestrator_client import OrchestratorClient, OrchestratorError
from tests.lossy_server import lossy_server

pytestmark = pytest.mark.django_db  # every request carries the audit head, read from the chain


def _send(url: str) -> None:
    with OrchestratorClient(url, "token", timeout=5, pause=0.01) as api:
        send(api, "/masked", time.monotonic() + 10, content=b"blob")


def test_a_retry_told_already_sent_counts_as_delivered() -> None:
    with lossy_server(409, "site-a already sent its masked input") as (url, received):
        _send(url)
    assert received == [("POST", b"blob"), ("POST", b"blob")]


def test_other_conflicts_after_a_retry_still_abort() -> None:
    refused = pytest.raises(SecureAbort, match="HTTP 409: masked inputs are not accepted")
    with lossy_server(409, "masked inputs are not accepted now (phase unmask)") as (url, received), refused:
        _send(url)
    assert len(received) == 2


def test_a_get_is_retried_once_on_a_broken_connection() -> None:
    with lossy_server(200, "fine") as (url, received), OrchestratorClient(url, "token", timeout=5) as api:
        assert api.get("/setup").json() == {"detail": "fine"}
    assert [method for method, _ in received] == ["GET", "GET"]


def test_a_post_without_a_deadline_is_never_resent() -> None:
    unreachable = pytest.raises(OrchestratorError, match="unreachable")
    with (
        lossy_server(201, "created twice") as (url, received),
        OrchestratorClient(url, "token", timeout=5) as api,
        unreachable,
    ):
        api.post("/updates", content=b"x")
    assert len(received) == 1
