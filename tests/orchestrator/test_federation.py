"""Joining and heartbeats at the orchestrator: signed, name-bound, role-gated."""

import pytest
from django.contrib.auth.models import Group, User
from django.test import override_settings

from common.models import ApiToken
from common.node import create_node
from common.protocol import JoinRequest, NodeInfo
from common.signing import sign
from orchestrator.federation import FederationError, accept_join, invite_datasite, record_heartbeat
from orchestrator.models import Datasite

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def join_request(node, name=None, tamper=False) -> JoinRequest:
    info = NodeInfo(name=name or node.name, role="datasite", url=node.public_url, **node.public_keys())
    unsigned = {"node": info.model_dump(), "callback_token": "fst_" + "x" * 40}
    signature = sign(node.signing_key(), unsigned)
    if tamper:
        unsigned["node"]["url"] = "http://evil.example"
    return JoinRequest(**unsigned, signature=signature)


@pytest.fixture
def site_node(tmp_path):
    return create_node(tmp_path / "a", "datasite", "site-a", "http://127.0.0.1:9100")


def test_join_registers_keys_and_url(site_node):
    site, raw = invite_datasite("site-a")
    token = ApiToken.authenticate(raw)
    accept_join(token.user, join_request(site_node))
    site.refresh_from_db()
    assert site.status == "joined" and site.url == "http://127.0.0.1:9100"
    assert site.signing_key == site_node.public_keys()["signing_key"]
    record_heartbeat(token.user, "site-a", {"ok": True})
    site.refresh_from_db()
    assert site.last_heartbeat is not None and site.last_status == {"ok": True}


def test_join_with_forged_signature_or_other_name_is_refused(site_node):
    site, raw = invite_datasite("site-a")
    user = ApiToken.authenticate(raw).user
    with pytest.raises(FederationError, match="signature"):
        accept_join(user, join_request(site_node, tamper=True))
    with pytest.raises(FederationError, match="invites 'site-a'"):
        accept_join(user, join_request(site_node, name="site-b"))
    site.refresh_from_db()
    assert site.status == "invited" and site.url == ""


def test_a_person_cannot_join_or_heartbeat(client, site_node):
    researcher = User.objects.create_user("rita")
    researcher.groups.add(Group.objects.get(name="researcher"))
    _, raw = ApiToken.issue(researcher, "x")
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        body = join_request(site_node).model_dump()
        response = client.post(
            "/api/federation/join", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
        )
        assert response.status_code == 403
        listing = client.get("/api/federation/datasites", HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert listing.status_code == 200 and listing.json() == []
    assert not Datasite.objects.exists()


def test_malformed_join_is_400_and_changes_nothing(client):
    _, raw = invite_datasite("site-a")
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        response = client.post(
            "/api/federation/join",
            {"node": {"name": "site-a"}},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw}",
        )
    assert response.status_code == 400
    assert Datasite.objects.get().status == "invited"


def test_inviting_twice_is_refused():
    invite_datasite("site-a")
    with pytest.raises(FederationError, match="already"):
        invite_datasite("site-a")
