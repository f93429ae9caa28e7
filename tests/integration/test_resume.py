"""SIGKILL the orchestrator mid-study: it resumes at the last finished round, and the final
model equals an uninterrupted run with the same seeds."""

import hashlib
import os
import signal
import time

import numpy as np
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
SITES = ["site-a", "site-b"]


def checkpoint(cluster, study_id: str, number: int):
    return (
        cluster.orchestrator.dir
        / "data"
        / "studies"
        / study_id
        / "checkpoints"
        / f"round-{number:05d}.safetensors"
    )


def test_sigkill_resume_equals_uninterrupted_run(tmp_path, so100_sources):
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "1", "FEDSILO_PUBLIC_DP_SEED": "1"}
    with start_federation(tmp_path / "fed", SITES, env=env) as cluster:
        owners = {
            s.name: prepare_site(s, src) for s, src in zip(cluster.datasites, so100_sources, strict=True)
        }
        orch = cluster.orchestrator
        token = researcher_token(orch)
        with Client(orch.url, token) as client:
            crashed = propose_tiny_study(
                client, SITES, rounds=3, title="crashed", local_steps=4, aggregation="plain"
            )
            for site in cluster.datasites:
                approve_when_asked(site, owners[site.name], crashed.id)
            deadline = time.monotonic() + 300
            while crashed.status()["round"] < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert crashed.status()["round"] == 2, crashed.status()
            first = hashlib.sha256(checkpoint(cluster, crashed.id, 1).read_bytes()).hexdigest()
        orch.stop(signal.SIGKILL)  # mid round 2: no graceful shutdown of server or engine
        orch.start()
        orch.wait_healthy()
        with Client(orch.url, token) as client:
            resumed = client.study(crashed.id)
            assert resumed.status()["round"] >= 2  # round 1 is not redone
            assert resumed.wait(timeout=600)["status"] == "finished"
            assert hashlib.sha256(checkpoint(cluster, crashed.id, 1).read_bytes()).hexdigest() == first
            rounds = resumed.metrics()
            assert [r["round"] for r in rounds] == [1, 2, 3, 4]

            clean = propose_tiny_study(
                client, SITES, rounds=3, title="uninterrupted", local_steps=4, aggregation="plain"
            )
            for site in cluster.datasites:
                approve_when_asked(site, owners[site.name], clean.id)
            assert clean.wait(timeout=600)["status"] == "finished"
            a = load_file(resumed.download_model(tmp_path / "resumed.safetensors"))
            b = load_file(clean.download_model(tmp_path / "clean.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
