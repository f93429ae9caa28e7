"""A site's secure-aggregation POSTs against a real HTTP server that loses one answer."""

from __future__ import annotations

import time

import httpx
import pytest

from datasite import secure_rounds
from tests.lossy_server import lossy_server


def _send(url: str, monkeypatch) -> None:
    monkeypatch.setattr(secure_rounds, "POLL_SECONDS", 0.01)
    api = secure_rounds.OrchestratorCalls.__new__(secure_rounds.OrchestratorCalls)
    api.http = httpx.Client(base_url=url, timeout=5)
    try:
        secure_rounds.send(api, "/masked", time.monotonic() + 10, content=b"blob")
    finally:
        api.close()


def test_a_retry_told_already_sent_counts_as_delivered(monkeypatch) -> None:
    with lossy_server(409, "site-a already sent its masked input") as (url, received):
        _send(url, monkeypatch)
    assert received == [("POST", b"blob"), ("POST", b"blob")]


def test_other_conflicts_after_a_retry_still_abort(monkeypatch) -> None:
    refused = pytest.raises(secure_rounds.SecureAbort, match="HTTP 409: masked inputs are not accepted")
    with lossy_server(409, "masked inputs are not accepted now (phase unmask)") as (url, received), refused:
        _send(url, monkeypatch)
    assert len(received) == 2
