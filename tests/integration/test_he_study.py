"""An `he` study over HTTP with real processes: the key ceremony through the orchestrator,
encrypted chunked uploads, one site decrypting the sum; the global model equals the plain
aggregate; the orchestrator keeps no plaintext update and never holds the secret key."""

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from orchestrator.client import Client
from privacy import he
from privacy.secure_vector import UpdateEncoding, layout_from
from privacy.strategies import ClientResult, aggregate_plain
from tests.integration.federation import (
    approve_when_asked,
    prepare_site,
    propose_tiny_study,
    researcher_token,
    run_shell,
    start_federation,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SITES = ["site-a", "site-b", "site-c"]
SECURE = {"clip": 0.5, "max_weight": 1000.0}


def _examples(site, study_id: str) -> dict:
    code = (
        "import json; from datasite.models import RoundRun, HEKey, HEDecryption; "
        f"k = HEKey.objects.get(study='{study_id}'); "
        f"n = {{r.round: r.num_examples for r in RoundRun.objects.filter(study='{study_id}')}}; "
        f"d = list(HEDecryption.objects.filter(study='{study_id}').values_list('round', flat=True)); "
        "print(json.dumps({'examples': n, 'key_id': k.key_id, 'key_holder': k.key_holder, 'decrypted': d}))"
    )
    return json.loads(run_shell(site, code).strip().splitlines()[-1])


def test_he_study_sums_under_ckks_and_the_orchestrator_sees_no_update_or_key(tmp_path, so100_sources):
    from datasite.datagen import generate_so100

    third = generate_so100(
        tmp_path / "lab-c", episodes=6, contributors=3, seed=5, profile="lab-a", image_size=(32, 40)
    )
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "1", "FEDSILO_SECAGG_POLL_SECONDS": "0.3"}
    with start_federation(tmp_path / "fed", SITES, env=env) as cluster:
        sites = {s.name: s for s in cluster.datasites}
        owners = {
            name: prepare_site(sites[name], src)
            for name, src in zip(SITES, [*so100_sources, third], strict=True)
        }
        orch = cluster.orchestrator
        with Client(orch.url, researcher_token(orch)) as client:
            study = propose_tiny_study(
                client, SITES, rounds=2, aggregation="he", min_sites=2, local_steps=2, secure=SECURE
            )
            for site in cluster.datasites:
                assert approve_when_asked(site, owners[site.name], study.id)["status"] == "approved"
            final = study.wait(timeout=900)
            assert final["status"] == "finished", final
            rounds = study.metrics()
        facts = {name: _examples(site, study.id) for name, site in sites.items()}
        studies = orch.dir / "data" / "studies" / study.id
        ceremony = json.loads(
            run_shell(
                orch,
                "import json; from orchestrator.models import StudyKey; "
                f"k = StudyKey.objects.get(study_id='{study.id}'); "
                "print(json.dumps({'key_id': k.key_id, 'holder': k.key_holder, 'delivered': k.delivered, "
                "'envelopes': k.envelopes, 'done': k.done}))",
            )
            .strip()
            .splitlines()[-1]
        )

    # one key, made by the first site, sealed to the two others; the orchestrator kept no envelope
    assert ceremony == {
        "key_id": ceremony["key_id"],
        "holder": "site-a",
        "delivered": ["site-b", "site-c"],
        "envelopes": {},
        "done": True,
    }
    assert {f["key_id"] for f in facts.values()} == {ceremony["key_id"]}
    assert {f["key_holder"] for f in facts.values()} == {"site-a"}
    for number in (1, 2):
        secure = rounds[number - 1]["secure"]
        assert secure["mode"] == "he" and secure["survivors"] == SITES and secure["dropped"] == []
        assert number in facts[secure["decrypted_by"]]["decrypted"]
        assert "num_examples" not in rounds[number - 1]

    # each round's new weights = previous + the plain FedProx aggregate of the sites' updates
    def ckpt(r):
        return load_file(studies / "checkpoints" / f"round-{r:05d}.safetensors")

    needles = []
    for number in (1, 2):
        updates = {
            name: load_file(
                sites[name].dir / "data" / "rounds" / study.id / f"{number:05d}" / "update.safetensors"
            )
            for name in SITES
        }
        examples = {name: facts[name]["examples"][str(number)] for name in SITES}
        expected = aggregate_plain([ClientResult(updates[n], examples[n], 2) for n in SITES], "fedprox")
        before, after = ckpt(number - 1), ckpt(number)
        for k in expected:
            np.testing.assert_allclose(after[k], before[k] + expected[k], atol=2e-6)
        enc = UpdateEncoding(
            layout_from(updates[SITES[0]]), "fedprox", SECURE["clip"], SECURE["max_weight"], 2
        )
        for name in SITES:
            flat = np.concatenate([np.asarray(updates[name][k]).reshape(-1) for k in sorted(updates[name])])
            encoded = enc.encode(updates[name], examples[name], 2)[0]
            for blob in (
                flat.astype(np.float32).tobytes(),
                flat.astype(np.float64).tobytes(),
                encoded.tobytes(),
            ):
                needles += [blob[i : i + 32] for i in (0, 4096) if len(blob) >= i + 32]
    # slices of the secret key: SEAL's serialized secret-key polynomial
    secret = (sites["site-a"].dir / "keys" / "he" / f"{study.id}.ckks").read_bytes()
    assert he.SecretContext(secret).key_id.hex() == ceremony["key_id"]
    needles += [secret[i : i + 32] for i in range(len(secret) // 3, len(secret), len(secret) // 5)]

    # the orchestrator's database, files, checkpoints and log hold none of them; no chunk is left
    assert not list(studies.rglob("*.ckks"))
    files = [p for p in Path(orch.dir).rglob("*") if p.is_file()]
    assert any(p.name == "node.log" for p in files) and any(p.name.startswith("db.sqlite3") for p in files)
    blobs = [p.read_bytes() for p in files]
    for needle in [n for n in needles if any(n)]:
        variants = [needle] + [base64.b64encode(needle[i:]).rstrip(b"=")[:24] for i in range(3)]
        for blob in blobs:
            assert not any(v in blob for v in variants)
