"""The he mode at the orchestrator, in process: chunk uploads, refusals, the encrypted sum,
decryption by the asked site only, and the round closed with the decrypted sum."""

import json
from datetime import timedelta

import numpy as np
import pytest
from django.test import override_settings
from django.utils import timezone
from safetensors.numpy import save

from common.errors import ServiceError
from common.protocol import Plan
from orchestrator import checkpoints, engine, modes
from orchestrator.federation import invite_datasite
from orchestrator.models import Datasite, Round, SecureSession, Study, StudyKey
from privacy import he
from privacy.secure_vector import UpdateEncoding, layout_from
from privacy.strategies import ClientResult, aggregate_plain
from tests.orchestrator.studies import running_study

pytestmark = [pytest.mark.django_db]
SITES = ("site-a", "site-b", "site-c")
RNG = np.random.default_rng(5)
WEIGHTS = {"a.weight": np.zeros((64, 100), np.float32), "b.bias": np.zeros(40, np.float32)}
UPDATES = {s: {k: RNG.normal(0, 0.02, v.shape).astype(np.float32) for k, v in WEIGHTS.items()} for s in SITES}
EXAMPLES = {"site-a": 120, "site-b": 45, "site-c": 300}
SECURE = {"clip": 0.1, "max_weight": 1000}


@pytest.fixture(scope="module")
def secret() -> he.SecretContext:
    return he.SecretContext.generate()


@pytest.fixture
def fed(settings, tmp_path, django_user_model, secret):
    settings.DATA_DIR = tmp_path
    settings.FEDSILO_HE_CHUNK_VALUES = he.SLOTS  # 6441 values: two chunks
    tokens = {}
    for name in SITES:
        site, raw = invite_datasite(name)
        Datasite.objects.filter(pk=site.pk).update(status="joined", url="http://127.0.0.1:9")
        tokens[name] = raw
    plan = Plan(rounds=2, local_steps=2, aggregation="he", min_sites=2, secure=SECURE)
    study = running_study(django_user_model.objects.create_user("rita"), plan, WEIGHTS)
    StudyKey.objects.create(
        study=study,
        key_holder="site-a",
        key_id=secret.key_id.hex(),
        delivered=["site-b", "site-c"],
        done=True,
    )
    now = timezone.now()
    Round.objects.create(
        study=study, number=1, participants=list(SITES), deadline=now + timedelta(hours=1), last_sent_at=now
    )
    tick(study)
    return study, tokens


def tick(study):
    engine.advance(Study.objects.get(pk=study.pk))


def call(client, method, study, token, what, body=None, raw=None):
    path = f"/api/secure/studies/{study.pk}/rounds/1/he/{what}"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        if method == "GET":
            return client.get(path, **auth)
        if raw is not None:
            return client.post(path, raw, content_type="application/octet-stream", **auth)
        return client.post(path, json.dumps(body), content_type="application/json", **auth)


def encoded(site: str) -> np.ndarray:
    enc = UpdateEncoding(layout_from(WEIGHTS), "fedavg", SECURE["clip"], SECURE["max_weight"], 2)
    return enc.encode(UPDATES[site], EXAMPLES[site], 2)[0]


def frames(secret, site: str) -> list[bytes]:
    return list(he.encrypt_stream(secret, encoded(site), weight=1.0, chunk_values=he.SLOTS))


def test_he_round_sums_encrypted_chunks_and_serves_the_aggregate_to_the_asked_site_only(
    client, fed, secret, monkeypatch
):
    study, tokens = fed
    setup = call(client, "GET", study, tokens["site-a"], "setup").json()["setup"]
    assert setup["key_id"] == secret.key_id.hex() and setup["chunk_values"] == he.SLOTS
    assert setup["vector_length"] == 64 * 100 + 40 + 1 and setup["received"] == [] and not setup["committed"]

    a, b = frames(secret, "site-a"), frames(secret, "site-b")
    assert call(client, "POST", study, tokens["site-a"], "chunks/0", raw=a[0]).status_code == 201
    assert call(client, "GET", study, tokens["site-a"], "setup").json()["setup"]["received"] == [0]
    early = call(client, "POST", study, tokens["site-a"], "commit", body={"metrics": {}})
    assert early.status_code == 409 and "[1]" in early.json()["detail"]
    assert call(client, "POST", study, tokens["site-a"], "chunks/1", raw=a[1]).status_code == 201
    assert (
        call(client, "POST", study, tokens["site-a"], "commit", body={"metrics": {"loss": 1.0}}).status_code
        == 201
    )
    assert call(client, "POST", study, tokens["site-a"], "chunks/0", raw=a[0]).status_code == 409  # committed

    refusals = {
        "chunks/1": (a[0], "header says index 0"),  # chunk 0 posted as chunk 1
        "chunks/0": (frames(he.SecretContext.generate(), "site-b")[0], "not this study's key"),
        "chunks/5": (b[0], "out of range"),
    }
    for what, (blob, reason) in refusals.items():
        answer = call(client, "POST", study, tokens["site-b"], what, raw=blob)
        assert answer.status_code == 400 and reason in answer.json()["detail"], answer.json()
    garbage = call(client, "POST", study, tokens["site-b"], "chunks/0", raw=b"x" * 100)
    assert garbage.status_code == 400
    for index, frame in enumerate(b):
        assert call(client, "POST", study, tokens["site-b"], f"chunks/{index}", raw=frame).status_code == 201
    assert call(client, "POST", study, tokens["site-b"], "commit", body={"metrics": {}}).status_code == 201
    outsider, outsider_token = invite_datasite("site-x")
    Datasite.objects.filter(pk=outsider.pk).update(status="joined")
    assert call(client, "GET", study, outsider_token, "setup").status_code == 409

    # site-c never uploads; at the deadline the sum of a and b is formed and site-a is asked first
    tick(study)
    assert SecureSession.objects.get(study=study).phase == "upload"
    SecureSession.objects.filter(study=study).update(phase_deadline=timezone.now() - timedelta(seconds=1))
    tick(study)  # site-a's URL does not answer: it stays the one asked, the next step asks another
    session = SecureSession.objects.get(study=study)
    assert (session.phase, session.survivors, session.dropped) == (
        "decrypt",
        ["site-a", "site-b"],
        ["site-c"],
    )
    assert session.decryptors == ["site-a"]
    assert not list(checkpoints.study_dir(study.pk).rglob("uploads/*/*.ckks"))  # individual chunks gone
    assert call(client, "POST", study, tokens["site-c"], "chunks/0", raw=a[0]).status_code == 409
    assert call(client, "GET", study, tokens["site-b"], "aggregate/0").status_code == 409
    aggregate = [call(client, "GET", study, tokens["site-a"], f"aggregate/{i}").content for i in range(2)]
    assert [he.read_chunk_header(f).contributors for f in aggregate] == [2, 2]
    summed = he.decrypt_stream(secret, aggregate, setup["vector_length"])
    np.testing.assert_allclose(summed, encoded("site-a") + encoded("site-b"), atol=1e-7)

    class AnsweringSite:  # the next key holder asked answers the decrypted sum
        def __init__(self, site):
            self.site = site

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def he_decrypt(self, study_id, round_number, body):
            assert round_number == 1 and body["contributors"] == ["site-a", "site-b"]
            return save({"sum": summed})

    monkeypatch.setattr("orchestrator.modes.he.SiteClient", AnsweringSite)
    tick(study)
    rnd = Round.objects.get(study=study, number=1)
    assert rnd.status == "done" and rnd.metrics["secure"]["decrypted_by"] == "site-b"
    assert rnd.metrics["secure"]["survivors"] == ["site-a", "site-b"] and "num_examples" not in rnd.metrics
    expected = aggregate_plain(
        [ClientResult(UPDATES[s], EXAMPLES[s], 2) for s in ("site-a", "site-b")], "fedavg"
    )
    weights, _ = checkpoints.load(study.pk, 1)
    for k, v in expected.items():
        np.testing.assert_allclose(weights[k], WEIGHTS[k] + v, atol=1e-6)
    assert not list(checkpoints.study_dir(study.pk).rglob("*.ckks"))


def test_he_proposals_are_checked(django_user_model):
    with pytest.raises(ServiceError, match="safe value bound"):
        modes.get("he").check_proposal(Plan(rounds=1, aggregation="he", secure={"clip": 10_000}), 3)
    with pytest.raises(ServiceError, match="at most 32 sites"):
        modes.get("he").check_proposal(Plan(rounds=1, aggregation="he"), 33)
    with pytest.raises(ServiceError, match="at least 2 sites"):
        modes.get("he").check_proposal(Plan(rounds=1, aggregation="he"), 1)
    modes.get("he").check_proposal(Plan(rounds=1, aggregation="he", min_sites=2), 3)


def test_a_secagg_round_has_no_he_endpoints(client, fed):
    study, tokens = fed
    plan = {**study.plan, "aggregation": "secagg"}
    Study.objects.filter(pk=study.pk).update(plan=plan)
    SecureSession.objects.filter(study=study).update(mode="secagg")
    answer = call(client, "GET", study, tokens["site-a"], "setup")
    assert answer.status_code == 409 and "not an he session" in answer.json()["detail"]
