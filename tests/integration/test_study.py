"""A federated study over HTTP: an orchestrator and two datasites as real processes."""

import os

import pytest
from safetensors.numpy import load_file

from orchestrator.client import Client
from tests.integration.federation import (
    approve_when_asked,
    prepare_site,
    propose_tiny_study,
    researcher_token,
    start_federation,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_round_study_over_http(tmp_path, so100_sources):
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "1"}
    with start_federation(tmp_path / "fed", ["site-a", "site-b"], env=env) as cluster:
        owners = {
            s.name: prepare_site(s, src) for s, src in zip(cluster.datasites, so100_sources, strict=True)
        }
        with Client(cluster.orchestrator.url, researcher_token(cluster.orchestrator)) as client:
            study = propose_tiny_study(client, ["site-a", "site-b"], rounds=2, aggregation="plain")
            for site in cluster.datasites:
                decision = approve_when_asked(site, owners[site.name], study.id)
                assert decision["status"] == "approved" and decision["decided_by"] == "owner"
            assert study.wait(timeout=600)["status"] == "finished"
            rounds = study.metrics()
            model = load_file(study.download_model(tmp_path / "model.safetensors"))
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[-1]["eval_only"]
    for r in rounds[:2]:
        assert set(r["sites"]) == {"site-a", "site-b"}
        assert all(m["loss_after"] is not None for m in r["sites"].values())
    assert all(r["heldout_loss"] is not None for r in rounds)
    eps = rounds[1]["epsilon"]
    assert set(eps) == {"site-a/so100", "site-b/so100"} and all(v > 0 for v in eps.values())
    assert eps["site-a/so100"] > rounds[0]["epsilon"]["site-a/so100"]  # composed over rounds
    assert model and all(v.dtype.name == "float32" for v in model.values())
