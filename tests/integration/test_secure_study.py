"""A secagg study over HTTP with real processes: three sites, one killed mid-round after sharing
its keys; secure statistics; the global model equals the survivors' plain aggregate; the
orchestrator keeps no site's plaintext or unmasked update in its database, files or log."""

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from datasite.datagen import generate_so100
from orchestrator.client import Client
from privacy.normstats import aggregate_stats
from privacy.secagg import SecAggParams
from privacy.secure_vector import UpdateEncoding, layout_from
from privacy.strategies import ClientResult, aggregate_plain
from tests.integration.fault_proxy import fault_proxy
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


def _site_facts(site, study_id: str) -> dict:
    code = (
        "import json; from datasite.preparation import study_stats; from datasite.models import RoundRun; "
        f"s = study_stats('{study_id}'); "
        f"n = {{r.round: r.num_examples for r in RoundRun.objects.filter(study='{study_id}')}}; "
        "print(json.dumps({'stats': s, 'examples': n}))"
    )
    return json.loads(run_shell(site, code).strip().splitlines()[-1])


def _needles(arrays: dict, quantized: np.ndarray | None) -> list[bytes]:
    flat = np.concatenate([np.asarray(arrays[k]).reshape(-1) for k in sorted(arrays)])
    out = [flat.astype(np.float32).tobytes()[i : i + 32] for i in (0, 4096)]
    out += [flat.astype(np.float64).tobytes()[i : i + 32] for i in (0, 8192)]
    if quantized is not None:
        out += [quantized.tobytes()[i : i + 32] for i in (0, 4096)]
    return [n for n in out if len(n) == 32 and any(n)]


def test_secagg_study_survives_a_site_killed_mid_round(tmp_path, so100_sources):
    third = generate_so100(
        tmp_path / "lab-c", episodes=6, contributors=3, seed=5, profile="lab-a", image_size=(32, 40)
    )
    env = {
        **os.environ,
        "FEDSILO_HEARTBEAT_SECONDS": "1",
        "FEDSILO_SECAGG_PHASE_SECONDS": "10",
        "FEDSILO_SECAGG_POLL_SECONDS": "0.3",
    }

    # site-c reaches the orchestrator through a proxy that kills its round task's process right
    # after forwarding the shares it sent in round 1 (and their answer)
    def after_shares_of_round_1(method: str, path: str) -> bool:
        return method == "POST" and path.endswith("/rounds/1/shares")

    with (
        fault_proxy(after_shares_of_round_1) as proxy,
        start_federation(tmp_path / "fed", SITES, env=env, through={"site-c": proxy}) as cluster,
    ):
        sites = {s.name: s for s in cluster.datasites}
        owners = {
            name: prepare_site(sites[name], src)
            for name, src in zip(SITES, [*so100_sources, third], strict=True)
        }
        orch = cluster.orchestrator
        with Client(orch.url, researcher_token(orch)) as client:
            study = propose_tiny_study(
                client, SITES, rounds=2, aggregation="secagg", min_sites=2, local_steps=2, secure=SECURE
            )
            for site in cluster.datasites:
                assert approve_when_asked(site, owners[site.name], study.id)["status"] == "approved"
            final = study.wait(timeout=900)
            assert final["status"] == "finished", final
            rounds = study.metrics()
            model = load_file(study.download_model(tmp_path / "model.safetensors"))
        facts = {name: _site_facts(site, study.id) for name, site in sites.items()}
        studies = orch.dir / "data" / "studies" / study.id
        norm_stats = json.loads(
            run_shell(
                orch,
                "import json; from orchestrator.models import Study; "
                f"print(json.dumps(Study.objects.get(pk='{study.id}').norm_stats))",
            )
            .strip()
            .splitlines()[-1]
        )

    # the fault happened once, where intended
    assert [sent for _, sent in proxy.killed] == [f"POST /api/secure/studies/{study.id}/rounds/1/shares"]

    # round 1: site-c dropped after sharing keys, the survivors' sum completed; round 2: all three
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[2]["eval_only"]
    assert rounds[0]["secure"]["survivors"] == ["site-a", "site-b"]
    assert rounds[0]["secure"]["dropped_after_sharing"] == ["site-c"]
    assert rounds[0]["dropped"] == ["site-c"]
    assert rounds[1]["secure"]["survivors"] == SITES
    assert "num_examples" not in rounds[0]
    assert model

    # secure statistics: the pooled mean and std equal the plain pooling of the sites' stats
    plain = aggregate_stats(
        [
            {k: {n: np.asarray(v) for n, v in by.items()} for k, by in f["stats"].items()}
            for f in facts.values()
        ]
    )
    for feature, by in plain.items():
        np.testing.assert_allclose(norm_stats[feature]["mean"], by["mean"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(norm_stats[feature]["std"], by["std"], rtol=1e-5, atol=1e-6)

    # each round's new weights = previous + the plain aggregate of the survivors' updates
    def ckpt(r):
        return load_file(studies / "checkpoints" / f"round-{r:05d}.safetensors")

    needles = []
    for number, survivors in ((1, ["site-a", "site-b"]), (2, SITES)):
        updates = {
            name: load_file(
                sites[name].dir / "data" / "rounds" / study.id / f"{number:05d}" / "update.safetensors"
            )
            for name in survivors
        }
        examples = {name: facts[name]["examples"][str(number)] for name in survivors}
        expected = aggregate_plain([ClientResult(updates[n], examples[n], 2) for n in survivors], "fedprox")
        before, after = ckpt(number - 1), ckpt(number)
        for k in expected:
            np.testing.assert_allclose(after[k], before[k] + expected[k], atol=2e-6)
        enc = UpdateEncoding(
            layout_from(updates[survivors[0]]), "fedprox", SECURE["clip"], SECURE["max_weight"], 2
        )
        params = SecAggParams(tuple(SITES), enc.length, SECURE["clip"])
        for name in survivors:
            quantized = params.quantize(enc.encode(updates[name], examples[name], 2)[0])
            needles += _needles(updates[name], quantized)
    victim_update = sites["site-c"].dir / "data" / "rounds" / study.id / "00001" / "update.safetensors"
    if victim_update.exists():  # trained, then died before masking: it must not have leaked either
        needles += _needles(load_file(victim_update), None)

    # the orchestrator's database, files, checkpoints and log hold none of them
    assert not (studies / "updates").exists()
    assert not list(studies.rglob("*.masked"))
    files = [p for p in Path(orch.dir).rglob("*") if p.is_file()]
    assert any(p.name == "node.log" for p in files) and any(p.name.startswith("db.sqlite3") for p in files)
    blobs = [p.read_bytes() for p in files]
    for needle in needles:
        variants = [needle] + [base64.b64encode(needle[i:]).rstrip(b"=")[:24] for i in range(3)]
        for blob in blobs:
            assert not any(v in blob for v in variants)
