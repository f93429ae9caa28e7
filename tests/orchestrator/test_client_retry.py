"""The researcher client against a real HTTP server that loses one answer."""

from __future__ import annotations

import pytest

from orchestrator.client import Client, FedsiloError
from tests.lossy_server import lossy_server


def test_a_get_is_retried_once_on_a_broken_connection() -> None:
    with lossy_server(200, "fine") as (url, received), Client(url, "token") as client:
        assert client._request("GET", "/studies").json() == {"detail": "fine"}
    assert [method for method, _ in received] == ["GET", "GET"]


def test_a_post_is_never_resent() -> None:
    refused = pytest.raises(FedsiloError, match="cannot reach")
    with lossy_server(201, "created twice") as (url, received), Client(url, "token") as client, refused:
        client._request("POST", "/studies", json={"title": "x"})
    assert len(received) == 1
