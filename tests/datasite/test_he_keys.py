"""The he key ceremony at datasites, in process: signed statements, sealing only to pinned
sites, opening only the pinned key holder's envelope, a 0600 key file, idempotent retries."""

import base64
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.errors import Conflict, Forbidden
from common.node import create_node
from common.protocol import Plan
from datasite.models import CodeRequest, HEKey
from datasite.modes import he_keys
from privacy import he

pytestmark = [pytest.mark.django_db]
STUDY = "c" * 32


@pytest.fixture
def nodes(tmp_path, settings):
    made = {n: create_node(tmp_path / n, "datasite", n, "http://127.0.0.1:9") for n in ("site-a", "site-b")}
    keys = {n: node.public_keys()["signing_key"] for n, node in made.items()}
    CodeRequest.objects.create(
        study=STUDY,
        version=1,
        title="t",
        researcher="rita",
        code={},
        code_sha256="0" * 64,
        plan=Plan(rounds=1, aggregation="he").model_dump(),
        plan_sha256="1" * 64,
        sites=sorted(made),
        site_keys=keys,
        status=CodeRequest.Status.APPROVED,
    )

    def act_as(name):
        settings.NODE_NAME, settings.NODE_DIR = name, made[name].dir

    return made, act_as


def test_the_key_reaches_the_pinned_sites_only(nodes):
    made, act_as = nodes
    act_as("site-b")
    statement = he_keys.key_statement(STUDY)

    act_as("site-a")
    forged = {**statement, "kex_key": X25519PrivateKey.generate().public_key().public_bytes_raw().hex()}
    with pytest.raises(Forbidden, match="does not verify"):
        he_keys.make_key(STUDY, {"site-b": forged})
    with pytest.raises(Forbidden, match="outside the approved study"):
        he_keys.make_key(STUDY, {"site-b": statement, "site-x": statement})
    answer = he_keys.make_key(STUDY, {"site-b": statement})
    again = he_keys.make_key(STUDY, {"site-b": statement})  # a retry reseals the same key
    assert answer["key_id"] == again["key_id"] and answer["key_holder"] == "site-a"
    assert base64.b64decode(answer["public_context"]) == he.public_context_bytes()
    own = he_keys.study_key(STUDY)
    path = made["site-a"].dir / "keys" / "he" / f"{STUDY}.ckks"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and own.key_id.hex() == answer["key_id"]

    HEKey.objects.all().delete()  # site-b has its own database
    act_as("site-b")
    body = {"key_holder": "site-a", "key_id": answer["key_id"], "envelope": answer["envelopes"]["site-b"]}
    with pytest.raises(Forbidden, match="no signing key"):  # not a pinned site
        he_keys.receive_key(STUDY, {**body, "key_holder": "site-x"})
    tampered = bytearray(base64.b64decode(body["envelope"]))
    tampered[-80] ^= 1
    with pytest.raises(Forbidden, match="key envelope refused"):
        he_keys.receive_key(STUDY, {**body, "envelope": base64.b64encode(bytes(tampered)).decode()})
    with pytest.raises(Forbidden, match="key envelope refused"):  # another key id
        he_keys.receive_key(STUDY, {**body, "key_id": "00" * 16})
    assert he_keys.receive_key(STUDY, body) == {"key_id": answer["key_id"]}
    assert he_keys.receive_key(STUDY, body) == {"key_id": answer["key_id"]}  # idempotent
    assert he_keys.study_key(STUDY).key_id == own.key_id
    act_as("site-a")
    statement_a = he_keys.key_statement(STUDY)
    act_as("site-b")
    with pytest.raises(Conflict, match="already holds site-a's key"):  # no second key holder
        he_keys.make_key(STUDY, {"site-a": statement_a})


def test_only_he_studies_take_part(nodes):
    _, act_as = nodes
    CodeRequest.objects.filter(study=STUDY).update(plan=Plan(rounds=1, aggregation="secagg").model_dump())
    act_as("site-a")
    with pytest.raises(Forbidden, match="homomorphic"):
        he_keys.key_statement(STUDY)
    CodeRequest.objects.filter(study=STUDY).update(status=CodeRequest.Status.PENDING)
    with pytest.raises(Forbidden, match="not approved"):
        he_keys.key_statement(STUDY)
