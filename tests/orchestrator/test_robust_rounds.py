"""Byzantine-robust aggregation in plain-mode rounds, in process; proposals that cannot run it."""

import json
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from pydantic import ValidationError

from common.errors import ServiceError
from common.protocol import CodeBundle, Plan, RobustPlan, plan_sha256
from common.roles import RESEARCHER
from orchestrator import checkpoints, engine, services
from orchestrator.federation import invite_datasite
from orchestrator.models import Datasite, Round, Study
from orchestrator.tensors import to_bytes
from tests.orchestrator.studies import running_study

pytestmark = [pytest.mark.django_db]
SITES = ("site-a", "site-b", "site-c")
WEIGHTS = {"a.weight": np.zeros((4, 3), np.float32), "b.bias": np.zeros(5, np.float32)}
HONEST = {"site-a": 0.01, "site-b": 0.02}
POISON = 1e30  # site-c: huge but finite, so the upload itself is accepted


@pytest.fixture
def sites(settings, tmp_path, django_user_model):
    settings.DATA_DIR = tmp_path
    tokens = {}
    for name in SITES:
        site, raw = invite_datasite(name)
        Datasite.objects.filter(pk=site.pk).update(status="joined", url="http://127.0.0.1:9")
        tokens[name] = raw
    return django_user_model.objects.create_user("rita"), tokens


def start(researcher, **robust) -> Study:
    plan = Plan(rounds=2, aggregation="plain", robust=robust)
    study = running_study(researcher, plan, WEIGHTS, plan_sha256(plan))
    now = timezone.now()
    Round.objects.create(
        study=study, number=1, participants=list(SITES), deadline=now + timedelta(hours=1), last_sent_at=now
    )
    return study


def upload(client, study, token, site, value):
    meta = {"study": study.pk, "round": 1, "site": site, "num_examples": 10, "local_steps": 2, "metrics": {}}
    arrays = {k: np.full(v.shape, value, np.float32) for k, v in WEIGHTS.items()}
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        response = client.post(
            f"/api/studies/{study.pk}/rounds/1/updates",
            {"meta": json.dumps(meta), "update": SimpleUploadedFile("u.safetensors", to_bytes(arrays))},
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
    assert response.status_code == 201, response.content


def play_round(client, study, tokens, poison=True):
    for site, value in HONEST.items():
        upload(client, study, tokens[site], site, value)
    if poison:
        upload(client, study, tokens["site-c"], "site-c", POISON)
    engine.advance(Study.objects.get(pk=study.pk))
    return Study.objects.get(pk=study.pk), Round.objects.get(study=study, number=1)


def test_median_round_is_unaffected_by_a_poisoned_update(client, sites):
    researcher, tokens = sites
    study, rnd = play_round(client, start(researcher, method="median", f=1), tokens)
    assert rnd.status == "done" and study.current_round == 2
    weights, _ = checkpoints.load(study.pk, 1)
    assert weights.keys() == WEIGHTS.keys()
    for w in weights.values():  # median of 0.01, 0.02, 1e30 per coordinate
        assert w.dtype == np.float32
        np.testing.assert_allclose(w, np.full(w.shape, 0.02, np.float32))
    assert rnd.metrics["robust"] == {"method": "median", "f": 1}


def test_the_same_round_without_robust_aggregation_is_poisoned(client, sites):
    researcher, tokens = sites
    study, _ = play_round(client, start(researcher), tokens)
    weights, _ = checkpoints.load(study.pk, 1)
    assert np.all(weights["b.bias"] > 1e29)  # the weighted mean follows the attacker


def test_multikrum_records_the_sites_it_kept(client, sites):
    researcher, tokens = sites
    study, rnd = play_round(client, start(researcher, method="multikrum", f=0, multikrum_m=2), tokens)
    assert rnd.metrics["robust"] == {"method": "multikrum", "f": 0, "selected": ["site-a", "site-b"]}
    weights, _ = checkpoints.load(study.pk, 1)
    np.testing.assert_allclose(weights["a.weight"], 0.015, rtol=1e-6)


def test_krum_records_the_one_site_it_kept(client, sites):
    researcher, tokens = sites
    study, rnd = play_round(client, start(researcher, method="krum"), tokens)
    assert rnd.metrics["robust"]["selected"] == ["site-a"]  # a and b tie; the lower name wins
    np.testing.assert_allclose(checkpoints.load(study.pk, 1)[0]["b.bias"], 0.01, rtol=1e-6)


def test_too_few_updates_for_the_robust_rule_fail_the_round(client, sites):
    researcher, tokens = sites
    study = start(researcher, method="median", f=1)  # needs 3 updates
    for site, value in HONEST.items():
        upload(client, study, tokens[site], site, value)
    Round.objects.filter(study=study).update(deadline=timezone.now() - timedelta(seconds=1))
    engine.advance(Study.objects.get(pk=study.pk))
    study = Study.objects.get(pk=study.pk)
    assert study.status == "failed"
    assert "2 site(s) answered, 3 needed by robust median with f=1" in study.error
    assert "timed out: site-c" in study.error


# ----------------------------------------------------------------------------- the plan and proposals


def propose(researcher, **plan):
    plan = Plan(rounds=2, **plan)
    return services.propose(
        researcher, "t", CodeBundle(recipe="act-small"), plan, {s: f"ds-{s}" for s in SITES}
    )


def test_a_plan_without_robust_aggregation_hashes_as_before():
    plan = Plan(rounds=2, aggregation="plain")
    assert "robust" not in plan.model_dump()  # so plans approved before keep their SHA-256
    assert plan.robust == RobustPlan() and plan.robust.method == "none"
    robust = Plan(rounds=2, aggregation="plain", robust={"method": "median", "f": 1})
    assert robust.model_dump()["robust"] == {"method": "median", "f": 1, "multikrum_m": None}
    assert plan_sha256(robust) != plan_sha256(plan)
    assert Plan.model_validate(robust.model_dump()) == robust


@pytest.mark.parametrize(
    ("robust", "match"),
    [
        ({"f": 1}, "need a robust method"),
        ({"method": "median", "multikrum_m": 2}, "multikrum setting"),
        ({"method": "trimmed_mean"}, "trims nothing"),
        ({"method": "bulyan", "f": 1}, "pattern"),
        ({"method": "krum", "f": -1}, "greater than or equal"),
        ({"method": "krum", "beta": 0.1}, "Extra inputs"),
    ],
)
def test_bad_robust_plans_are_refused(robust, match):
    with pytest.raises(ValidationError, match=match):
        Plan(rounds=2, aggregation="plain", robust=robust)


def test_proposing_robust_aggregation(sites):
    researcher, _ = sites
    study = propose(researcher, aggregation="plain", robust={"method": "median", "f": 1})
    assert study.plan["robust"] == {"method": "median", "f": 1, "multikrum_m": None}
    assert "robust" not in propose(researcher, aggregation="plain").plan


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        (
            {"aggregation": "secagg", "robust": {"method": "median", "f": 1}},
            "robust aggregation needs every update in the clear; only plain mode allows it",
        ),
        ({"aggregation": "he", "robust": {"method": "krum"}}, "only plain mode allows it"),
        ({"aggregation": "plain", "strategy": "fednova", "robust": {"method": "median"}}, "fednova"),
        ({"aggregation": "plain", "robust": {"method": "krum", "f": 1}}, "needs at least 5 sites per round"),
        ({"aggregation": "plain", "robust": {"method": "median", "f": 2}}, "at least 5 sites per round"),
        (
            {"aggregation": "plain", "fraction": 0.5, "robust": {"method": "median", "f": 1}},
            "this plan has 2",
        ),
        ({"aggregation": "plain", "robust": {"method": "multikrum", "multikrum_m": 3, "f": 1}}, "at least 5"),
    ],
)
def test_proposals_that_cannot_run_robust_aggregation_are_refused(sites, plan, match):
    researcher, _ = sites
    with pytest.raises(ServiceError, match=match):
        propose(researcher, **plan)
    assert not Study.objects.exists()


def test_the_study_page_shows_the_robust_rule(client, sites, settings):
    researcher, _ = sites
    researcher.groups.add(Group.objects.get_or_create(name=RESEARCHER)[0])
    settings.ROOT_URLCONF = "webapp.urls_orchestrator"
    client.force_login(researcher)
    for study, text in (
        (start(researcher, method="median", f=1), "coordinate-wise median; tolerates 1 Byzantine site(s)"),
        (start(researcher), "none: the strategy&#x27;s weighted mean of all updates"),
    ):
        page = client.get(reverse("orchestrator:study", args=[study.pk])).content.decode()
        assert "<th>Robust aggregation</th>" in page and text in page
