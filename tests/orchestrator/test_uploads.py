"""Round uploads at the orchestrator: every bad message gets its status and changes nothing."""

import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone

from common.models import ApiToken
from orchestrator import checkpoints
from orchestrator.federation import invite_datasite
from orchestrator.models import Datasite, Round, SiteUpdate
from orchestrator.tensors import to_bytes
from tests.orchestrator.studies import running_study

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]
WEIGHTS = {"a.weight": np.zeros((4, 3), np.float32), "b.bias": np.zeros(5, np.float32)}


@pytest.fixture
def running(settings, tmp_path, django_user_model):
    settings.DATA_DIR = tmp_path
    tokens = {}
    for name in ("site-a", "site-b", "site-c"):
        site, raw = invite_datasite(name)
        Datasite.objects.filter(pk=site.pk).update(status="joined", url="http://127.0.0.1:9")
        tokens[name] = raw
    rita = django_user_model.objects.create_user("rita")
    study = running_study(rita, {"rounds": 3, "aggregation": "plain"}, WEIGHTS)
    Round.objects.create(
        study=study, number=1, participants=["site-a", "site-b"], deadline=timezone.now() + timedelta(hours=1)
    )
    return study, tokens


def upload(client, study, token, site="site-a", round_number=1, arrays=None, meta=None, raw=None):
    meta = meta or {
        "study": study.pk,
        "round": round_number,
        "site": site,
        "num_examples": 10,
        "local_steps": 2,
        "metrics": {"loss_after": 0.5},
    }
    body = raw if raw is not None else to_bytes(arrays if arrays is not None else WEIGHTS)
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        return client.post(
            f"/api/studies/{study.pk}/rounds/{round_number}/updates",
            {
                "meta": meta if isinstance(meta, str) else json.dumps(meta),
                "update": SimpleUploadedFile("u.safetensors", body),
            },
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )


def test_a_good_upload_is_stored_once(client, running):
    study, tokens = running
    assert upload(client, study, tokens["site-a"]).status_code == 201
    assert upload(client, study, tokens["site-a"]).status_code == 409  # replayed
    assert SiteUpdate.objects.count() == 1


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("out_of_order_round", 409),
        ("not_a_participant", 409),
        ("site_mismatch", 400),
        ("malformed_meta", 400),
        ("wrong_shape", 400),
        ("wrong_dtype", 400),
        ("missing_tensor", 400),
        ("nan", 400),
        ("not_safetensors", 400),
        ("oversize", 413),
        ("wrong_study", 400),
    ],
)
def test_bad_uploads_are_refused_and_change_nothing(client, running, case, status):
    study, tokens = running
    kwargs = {}
    token = tokens["site-a"]
    if case == "out_of_order_round":
        kwargs = {"round_number": 2}
    elif case == "not_a_participant":
        token, kwargs = tokens["site-c"], {"site": "site-c"}
    elif case == "site_mismatch":
        kwargs = {"site": "site-b"}
    elif case == "malformed_meta":
        kwargs = {"meta": "{not json"}
    elif case == "wrong_shape":
        kwargs = {"arrays": {**WEIGHTS, "b.bias": np.zeros(6, np.float32)}}
    elif case == "wrong_dtype":
        kwargs = {"arrays": {**WEIGHTS, "b.bias": np.zeros(5, np.float64)}}
    elif case == "missing_tensor":
        kwargs = {"arrays": {"a.weight": WEIGHTS["a.weight"]}}
    elif case == "nan":
        kwargs = {"arrays": {**WEIGHTS, "b.bias": np.full(5, np.nan, np.float32)}}
    elif case == "not_safetensors":
        kwargs = {"raw": b"\x80\x04pickle-bytes"}
    elif case == "oversize":
        kwargs = {"raw": b"\0" * (2 * 1024 * 1024)}
    elif case == "wrong_study":
        kwargs = {
            "meta": {"study": "f" * 32, "round": 1, "site": "site-a", "num_examples": 1, "local_steps": 1}
        }
    response = upload(client, study, token, **kwargs)
    assert response.status_code == status, response.content
    assert "detail" in response.json()
    assert not SiteUpdate.objects.exists()
    assert not (checkpoints.study_dir(study.pk) / "updates").exists() or not any(
        (checkpoints.study_dir(study.pk) / "updates").rglob("*.safetensors")
    )


def test_late_upload_after_the_round_closed_is_409(client, running):
    study, tokens = running
    Round.objects.filter(study=study, number=1).update(status="done")
    assert upload(client, study, tokens["site-b"], site="site-b").status_code == 409
    assert not SiteUpdate.objects.exists()


def test_a_person_cannot_upload(client, running, django_user_model):
    study, _ = running
    _, raw = ApiToken.issue(django_user_model.objects.get(username="rita"), "x")
    assert upload(client, study, raw).status_code == 403
