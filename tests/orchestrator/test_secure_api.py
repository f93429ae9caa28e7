"""Secure-aggregation messages at the orchestrator, in process: phases, refusals, no plaintext kept."""

import base64
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.apps import apps
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.utils import timezone

from common.protocol import Plan
from orchestrator import checkpoints, engine
from orchestrator.federation import invite_datasite
from orchestrator.models import Datasite, Round, SecureSession, SiteUpdate, Study
from orchestrator.tensors import to_bytes
from privacy.secagg import DecryptionError, EncryptedShare, KeyAdvert, SecAggClient, SecAggParams
from privacy.secure_vector import UpdateEncoding, layout_from
from privacy.strategies import ClientResult, aggregate_plain
from tests.orchestrator.studies import running_study

pytestmark = [pytest.mark.django_db]
SITES = ("site-a", "site-b", "site-c")
RNG = np.random.default_rng(3)
WEIGHTS = {"a.weight": np.zeros((16, 8), np.float32), "b.bias": np.zeros(40, np.float32)}
UPDATES = {s: {k: RNG.normal(0, 0.02, v.shape).astype(np.float32) for k, v in WEIGHTS.items()} for s in SITES}
EXAMPLES = {"site-a": 120, "site-b": 45, "site-c": 300}


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture
def fed(settings, tmp_path, django_user_model):
    settings.DATA_DIR = tmp_path
    keys = {n: Ed25519PrivateKey.generate() for n in SITES}
    tokens = {}
    for name in SITES:
        site, raw = invite_datasite(name)
        Datasite.objects.filter(pk=site.pk).update(
            status="joined", url="http://127.0.0.1:9", signing_key=base64.b64encode(_raw(keys[name])).decode()
        )
        tokens[name] = raw
    plan = Plan(
        rounds=2, local_steps=2, aggregation="secagg", min_sites=2, secure={"clip": 0.1, "max_weight": 1000}
    )
    study = running_study(django_user_model.objects.create_user("rita"), plan, WEIGHTS)
    now = timezone.now()
    Round.objects.create(
        study=study, number=1, participants=list(SITES), deadline=now + timedelta(hours=1), last_sent_at=now
    )
    tick(study)
    return study, tokens, keys


def tick(study):
    engine.advance(Study.objects.get(pk=study.pk))


def expire(study):
    SecureSession.objects.filter(study=study).update(phase_deadline=timezone.now() - timedelta(seconds=1))


def call(client, method, study, token, what, round_number=1, body=None, raw=None):
    path = f"/api/secure/studies/{study.pk}/rounds/{round_number}/{what}"
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        if method == "GET":
            return client.get(path, HTTP_AUTHORIZATION=f"Bearer {token}")
        if raw is not None:
            return client.post(
                path, raw, content_type="application/octet-stream", HTTP_AUTHORIZATION=f"Bearer {token}"
            )
        return client.post(
            path, json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )


def site_clients(client, study, tokens, keys):
    setup = call(client, "GET", study, tokens["site-a"], "setup").json()["setup"]
    params = SecAggParams.from_dict(setup["params"])
    peers = {n: keys[n].public_key() for n in SITES}
    return setup, params, {n: SecAggClient(n, setup["session_id"], keys[n], peers, params) for n in SITES}


def advertise_and_share(client, study, tokens, clients):
    for n, c in clients.items():
        assert (
            call(client, "POST", study, tokens[n], "advert", body=c.advertise_keys().to_dict()).status_code
            == 201
        )
    tick(study)
    shares = {}
    for n, c in clients.items():
        answer = call(client, "GET", study, tokens[n], "adverts").json()
        shares[n] = c.share_keys([KeyAdvert.from_dict(d) for d in answer["adverts"]])
    return shares


def test_a_round_with_a_dropout_sums_exactly_and_keeps_no_plaintext(client, fed, tmp_path):
    study, tokens, keys = fed
    setup, params, clients = site_clients(client, study, tokens, keys)
    assert setup["kind"] == "update" and params.threshold == 2 and set(setup["site_keys"]) == set(SITES)
    enc = UpdateEncoding(layout_from(UPDATES["site-a"]), "fedavg", 0.1, 1000, 2)
    assert setup["layout"]["manifest"] == [{"name": n, "shape": list(s)} for n, s in enc.layout]
    shares = advertise_and_share(client, study, tokens, clients)
    for n in SITES:
        body = {"shares": [m.to_dict() for m in shares[n]]}
        assert call(client, "POST", study, tokens[n], "shares", body=body).status_code == 201
    tick(study)
    quantized = {}
    for n in ("site-a", "site-b"):  # site-c crashes after sharing its keys
        routed = [
            EncryptedShare.from_dict(d)
            for d in call(client, "GET", study, tokens[n], "shares").json()["shares"]
        ]
        quantized[n] = params.quantize(enc.encode(UPDATES[n], EXAMPLES[n], 2)[0])
        blob = clients[n].masked_input(quantized[n], routed).to_bytes()
        assert call(client, "POST", study, tokens[n], "masked", raw=blob).status_code == 201
        assert call(client, "POST", study, tokens[n], "masked", raw=blob).status_code == 409  # replayed
    tick(study)
    assert SecureSession.objects.get(study=study).phase == "mask"
    # each input is kept as received (masked) until the sum is formed; none for site-c
    assert sorted(p.name for p in Path(tmp_path).rglob("*.masked")) == ["site-a.masked", "site-b.masked"]
    expire(study)
    tick(study)
    session = SecureSession.objects.get(study=study)
    assert (session.phase, session.survivors, session.dropped) == ("unmask", ["site-a", "site-b"], ["site-c"])
    assert call(client, "GET", study, tokens["site-c"], "unmask").status_code == 409
    for n in ("site-a", "site-b"):
        req = call(client, "GET", study, tokens[n], "unmask").json()["request"]
        response = clients[n].unmask(req["survivors"], req["dropped"]).to_dict()
        body = {"response": response, "metrics": {"loss_after": 0.5}}
        assert call(client, "POST", study, tokens[n], "unmask", body=body).status_code == 201
    tick(study)
    study.refresh_from_db()
    rnd = Round.objects.get(study=study, number=1)
    assert study.current_round == 2 and rnd.status == "done" and rnd.dropped == ["site-c"]
    assert rnd.metrics["secure"]["survivors"] == ["site-a", "site-b"]
    weights, _ = checkpoints.load(study.pk, 1)
    expected = aggregate_plain(
        [ClientResult(UPDATES[n], EXAMPLES[n], 2) for n in ("site-a", "site-b")], "fedavg"
    )
    for k in WEIGHTS:
        np.testing.assert_allclose(weights[k], WEIGHTS[k] + expected[k], atol=1e-6)
    assert SiteUpdate.objects.filter(round=rnd).count() == 2

    # nothing the orchestrator stored holds a site's update, quantized or not
    needles = []
    for n in SITES:
        flat = np.concatenate([UPDATES[n][k].reshape(-1) for k in sorted(WEIGHTS)])
        needles += [flat.tobytes()[i : i + 32] for i in (0, 200)]
        needles += [flat.astype(np.float64).tobytes()[i : i + 32] for i in (0, 400)]
        if n in quantized:
            needles += [quantized[n].tobytes()[i : i + 32] for i in (0, 200)]
    texts = [repr(list(m.objects.values())) for m in apps.get_models()]
    for needle in needles:
        encoded = {base64.b64encode(needle[i:]).decode()[:24] for i in range(3)}
        assert not any(e in t for e in encoded for t in texts)
        for path in Path(tmp_path).rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    assert not list(Path(tmp_path).rglob("*.masked"))  # the masked inputs are gone too


def test_wrong_rounds_forged_adverts_and_out_of_phase_messages_are_refused(client, fed):
    study, tokens, keys = fed
    setup, params, clients = site_clients(client, study, tokens, keys)
    advert = clients["site-a"].advertise_keys()
    assert (
        call(
            client, "POST", study, tokens["site-a"], "advert", round_number=2, body=advert.to_dict()
        ).status_code
        == 409
    )
    assert call(client, "GET", study, tokens["site-a"], "setup", round_number=7).status_code == 409
    other = KeyAdvert("fedsilo/x/round-1", advert.site_id, advert.c_pk, advert.s_pk, advert.signature)
    assert call(client, "POST", study, tokens["site-a"], "advert", body=other.to_dict()).status_code == 409
    forged = KeyAdvert(
        advert.round_id, "site-b", advert.c_pk, advert.s_pk, Ed25519PrivateKey.generate().sign(b"x" * 64)
    )
    assert call(client, "POST", study, tokens["site-a"], "advert", body=forged.to_dict()).status_code == 403
    assert call(client, "POST", study, tokens["site-b"], "advert", body=forged.to_dict()).status_code == 403
    impostor = SecAggClient("site-b", setup["session_id"], Ed25519PrivateKey.generate(), {}, params)
    assert (
        call(
            client, "POST", study, tokens["site-b"], "advert", body=impostor.advertise_keys().to_dict()
        ).status_code
        == 403
    )
    assert (
        call(client, "POST", study, tokens["site-a"], "advert", body={"type": "secagg/advert"}).status_code
        == 400
    )
    assert call(client, "POST", study, tokens["site-a"], "masked", raw=b"\0\0\0\2{}").status_code in (
        400,
        409,
    )
    assert call(client, "POST", study, tokens["site-a"], "shares", body={"shares": []}).status_code == 400
    assert call(client, "GET", study, tokens["site-a"], "adverts").json()["adverts"] is None
    # a plaintext update is refused outright in a secure study
    meta = {"study": study.pk, "round": 1, "site": "site-a", "num_examples": 1, "local_steps": 1}
    with override_settings(ROOT_URLCONF="webapp.urls_orchestrator"):
        plain = client.post(
            f"/api/studies/{study.pk}/rounds/1/updates",
            {"meta": json.dumps(meta), "update": SimpleUploadedFile("u", to_bytes(UPDATES["site-a"]))},
            HTTP_AUTHORIZATION=f"Bearer {tokens['site-a']}",
        )
    assert plain.status_code == 400 and SiteUpdate.objects.count() == 0


def test_tampered_shares_are_refused_by_the_server_or_the_receiver(client, fed):
    study, tokens, keys = fed
    _, params, clients = site_clients(client, study, tokens, keys)
    shares = advertise_and_share(client, study, tokens, clients)
    a = shares["site-a"]
    wrong_round = [EncryptedShare("fedsilo/x/round-9", m.sender, m.receiver, m.ciphertext) for m in a]
    assert (
        call(
            client,
            "POST",
            study,
            tokens["site-a"],
            "shares",
            body={"shares": [m.to_dict() for m in wrong_round]},
        ).status_code
        == 409
    )
    as_b = [EncryptedShare(m.round_id, "site-b", m.receiver, m.ciphertext) for m in a]
    assert (
        call(
            client, "POST", study, tokens["site-a"], "shares", body={"shares": [m.to_dict() for m in as_b]}
        ).status_code
        == 403
    )
    assert (
        call(client, "POST", study, tokens["site-a"], "shares", body={"shares": [a[0].to_dict()]}).status_code
        == 400
    )
    flipped = bytearray(a[0].ciphertext)
    flipped[20] ^= 1
    tampered = [EncryptedShare(a[0].round_id, a[0].sender, a[0].receiver, bytes(flipped)), *a[1:]]
    assert (
        call(
            client,
            "POST",
            study,
            tokens["site-a"],
            "shares",
            body={"shares": [m.to_dict() for m in tampered]},
        ).status_code
        == 201
    )
    assert (
        call(
            client, "POST", study, tokens["site-a"], "shares", body={"shares": [m.to_dict() for m in a]}
        ).status_code
        == 409
    )
    for n in ("site-b", "site-c"):
        assert (
            call(
                client, "POST", study, tokens[n], "shares", body={"shares": [m.to_dict() for m in shares[n]]}
            ).status_code
            == 201
        )
    tick(study)
    receiver = tampered[0].receiver
    routed = [
        EncryptedShare.from_dict(d)
        for d in call(client, "GET", study, tokens[receiver], "shares").json()["shares"]
    ]
    with pytest.raises(DecryptionError):
        clients[receiver].masked_input(np.zeros(params.vector_length, np.uint32), routed)
