"""A federated study over HTTP: an orchestrator and two datasites as real processes."""

import os

import pytest
from safetensors.numpy import load_file

from orchestrator.client import Client
from tests.integration.federation import (
    TINY_ACT,
    approve_when_asked,
    prepare_site,
    researcher_token,
    start_federation,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "1"}
    cluster = start_federation(tmp_path_factory.mktemp("fed"), sites=2, env=env)
    owners = {s.name: prepare_site(s, seed=i, profile=("lab-a", "lab-b")[i])
              for i, s in enumerate(cluster.datasites)}
    client = Client(cluster.orchestrator.url, researcher_token(cluster.orchestrator))
    yield cluster, owners, client
    client.close()
    cluster.stop()


def test_two_round_study_over_http(federation, tmp_path):
    cluster, owners, client = federation
    study = client.propose_study(
        "two-round act", datasets={"site-a": "so100", "site-b": "so100"}, rounds=2,
        recipe="act-small", config=TINY_ACT, strategy="fedprox", mu=0.01, local_steps=3,
        batch_size=2, min_sites=2, round_timeout_s=300, dp={"noise_multiplier": 1.0, "clip_norm": 1.0, "frames_per_episode": 2},
    )
    for site in cluster.datasites:
        decision = approve_when_asked(site, owners[site.name], study.id)
        assert decision["status"] == "approved" and decision["decided_by"] == "owner"
    final = study.wait(timeout=600)
    assert final["status"] == "finished"
    rounds = study.metrics()
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[-1]["eval_only"]
    for r in rounds[:2]:
        assert set(r["sites"]) == {"site-a", "site-b"}
        assert all(m["loss_after"] is not None for m in r["sites"].values())
    assert all(r["heldout_loss"] is not None for r in rounds)
    eps = rounds[1]["epsilon"]
    assert set(eps) == {"site-a/so100", "site-b/so100"} and all(v > 0 for v in eps.values())
    path = study.download_model(tmp_path / "model.safetensors")
    weights = load_file(path)
    assert weights and all(v.dtype.name == "float32" for v in weights.values())
