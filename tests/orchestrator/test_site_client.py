"""The orchestrator's client of a datasite against a real HTTP server that loses one answer."""

from __future__ import annotations

import pytest

from orchestrator.models import Datasite
from orchestrator.sites import SiteClient, SiteUnreachable
from tests.lossy_server import lossy_server

pytestmark = pytest.mark.django_db  # every request carries the audit head, read from the chain


def site(url: str) -> Datasite:
    return Datasite(name="site-a", url=url, callback_token="token")  # never saved


def test_an_idempotent_call_is_retried_once_on_a_broken_connection() -> None:
    with lossy_server(200, "fine") as (url, received), SiteClient(site(url)) as client:
        assert client.code_request("s1") == {"detail": "fine"}
    assert [method for method, _ in received] == ["GET", "GET"]


def test_a_post_is_never_resent_and_a_refusal_carries_its_status() -> None:
    with lossy_server(409, "no") as (url, received), SiteClient(site(url)) as client:
        with pytest.raises(SiteUnreachable) as lost:
            client.secure_stats("s1")
        assert lost.value.status == 0 and len(received) == 1
        with pytest.raises(SiteUnreachable, match="HTTP 409: no") as refused:
            client.secure_stats("s1")
        assert refused.value.status == 409 and len(received) == 2
