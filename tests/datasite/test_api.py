"""The datasite API in-process: datasets, code requests, approval, round assignment checks."""

import json

import pytest
from django.contrib.auth.models import Group, User
from django.test import override_settings

from common.errors import Conflict, ServiceError
from common.models import ApiToken
from common.protocol import CodeBundle, CodeRequestIn, Plan, bundle_sha256, plan_sha256
from datasite import budget
from datasite.code_requests import decide, receive_code_request, revoke
from datasite.consent import record_consent
from datasite.datagen import generate_so100
from datasite.datasets import register_dataset
from datasite.models import CodeRequest, LedgerEntry, RoundRun

pytestmark = [pytest.mark.django_db]
STUDY = "a" * 32


@pytest.fixture(scope="module")
def so100_root(tmp_path_factory):
    return generate_so100(
        tmp_path_factory.mktemp("ds") / "so100", episodes=5, contributors=3, seed=3, image_size=(32, 40)
    )


def token_for(username: str, role: str) -> str:
    user = User.objects.create_user(username)
    user.groups.add(Group.objects.get(name=role))
    return ApiToken.issue(user, "t")[1]


@pytest.fixture
def site(so100_root, settings):
    settings.NODE_NAME = "site-a"
    ds = register_dataset("so100", so100_root, epsilon_max=20.0, delta=1e-5)
    for person in set(ds.contributors().values()):
        record_consent(person, "policy-training", True, "form")
    return {
        "ds": ds,
        "peer": token_for("node.orchestrator", "peer_node"),
        "owner": token_for("olga", "data_owner"),
        "researcher": token_for("rita", "researcher"),
    }


def request_body(**plan_overrides) -> dict:
    code = CodeBundle(recipe="act-small", config={"dim_model": 32})
    plan = Plan(rounds=2, local_steps=2, batch_size=2, **plan_overrides)
    return {
        "study": STUDY,
        "version": 1,
        "title": "t",
        "researcher": "rita",
        "code": code.model_dump(),
        "code_sha256": bundle_sha256(code),
        "plan": plan.model_dump(),
        "datasets": ["so100"],
        "sites": ["site-a", "site-b"],
    }


def post(client, url, token, **kwargs):
    return client.post(url, HTTP_AUTHORIZATION=f"Bearer {token}", content_type="application/json", **kwargs)


@override_settings(ROOT_URLCONF="webapp.urls_datasite")
def test_request_approve_reserve_and_assignment_checks(client, site):
    body = request_body()
    assert post(client, "/api/code-requests", site["peer"], data=body).status_code == 201
    assert post(client, "/api/code-requests", site["peer"], data=body).status_code == 409  # replay
    shown = client.get(f"/api/code-requests/{STUDY}", HTTP_AUTHORIZATION=f"Bearer {site['owner']}").json()
    assert shown["status"] == "pending" and 0 < shown["projected_epsilon"]["so100"] < 20
    # the researcher cannot approve; a stale hash is refused and changes nothing
    assert (
        post(
            client,
            f"/api/code-requests/{STUDY}/approve",
            site["researcher"],
            data={"code_sha256": body["code_sha256"]},
        ).status_code
        == 403
    )
    assert (
        post(
            client, f"/api/code-requests/{STUDY}/approve", site["owner"], data={"code_sha256": "0" * 64}
        ).status_code
        == 409
    )
    assert not LedgerEntry.objects.exists()
    approved = post(
        client,
        f"/api/code-requests/{STUDY}/approve",
        site["owner"],
        data={"code_sha256": body["code_sha256"]},
    )
    assert approved.status_code == 200 and approved.json()["decided_by"] == "olga"
    assert LedgerEntry.objects.get().kind == "reserve"
    request = CodeRequest.objects.get()
    assert request.plan_sha256 == plan_sha256(Plan.model_validate(body["plan"]))
    good = {
        "study": STUDY,
        "round": 1,
        "code_sha256": body["code_sha256"],
        "plan_sha256": request.plan_sha256,
    }
    for bad, status in [
        ({**good, "code_sha256": "1" * 64}, 403),
        ({**good, "plan_sha256": "2" * 64}, 403),
        ({**good, "round": 9}, 409),
    ]:
        response = client.post(
            f"/api/studies/{STUDY}/rounds/{bad['round']}",
            {"assignment": json.dumps(bad), "weights": _file()},
            HTTP_AUTHORIZATION=f"Bearer {site['peer']}",
        )
        assert response.status_code == status, response.content
    assert not RoundRun.objects.exists()


def _file():
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("global.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")


@override_settings(ROOT_URLCONF="webapp.urls_datasite")
def test_public_datasets_hold_no_private_values(client, site):
    listing = client.get("/api/datasets", HTTP_AUTHORIZATION=f"Bearer {site['peer']}").json()
    text = json.dumps(listing)
    assert listing[0]["num_episodes"] == 5 and listing[0]["stats_shape"]["action"]["mean"] == [6]
    for person in site["ds"].contributors().values():
        assert person not in text
    mean = site["ds"].summary["stats"]["action"]["mean"][0]
    assert repr(mean) not in text


def test_denial_needs_a_reason_and_revoke_releases(site):
    receive_code_request(CodeRequestIn.model_validate(request_body()))
    request = CodeRequest.objects.get()
    owner = User.objects.get(username="olga")
    with pytest.raises(ServiceError, match="reason"):
        decide(request, owner, False, request.code_sha256, "")
    decide(request, owner, True, request.code_sha256)
    revoke(request, owner, "changed our mind")
    assert {e.kind for e in LedgerEntry.objects.all()} == {"reserve", "release"}
    assert budget.view(site["ds"]).committed == 0


def test_a_plan_without_dp_cannot_be_approved_on_a_budget(site):
    body = request_body(dp={"enabled": False})
    receive_code_request(CodeRequestIn.model_validate(body))
    request = CodeRequest.objects.get()
    with pytest.raises(Conflict, match="∞"):
        decide(request, User.objects.get(username="olga"), True, request.code_sha256)
    request.refresh_from_db()
    assert request.status == "pending" and not LedgerEntry.objects.exists()
