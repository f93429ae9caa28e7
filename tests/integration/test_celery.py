"""Round tasks on real Celery workers: a Redis-backed study, and a worker killed mid-task."""

import os
import signal
import time
import uuid

import httpx
import pytest

from orchestrator.client import Client
from tests.integration.conftest import require_service
from tests.integration.federation import (
    approve_when_asked,
    prepare_site,
    propose_tiny_study,
    researcher_token,
    run_shell,
    start_federation,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def unique_sites(n: int) -> list[str]:
    """Queue names are per site: fresh names keep runs from sharing a broker queue."""
    tag = uuid.uuid4().hex[:6]
    return [f"site-{chr(ord('a') + i)}-{tag}" for i in range(n)]


def test_two_round_study_on_redis_backed_workers(tmp_path, so100_sources):
    require_service(6379, "Redis")
    names = unique_sites(2)
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "1", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/5"}
    with start_federation(tmp_path / "fed", names, env=env, workers=True) as cluster:
        owners = {
            s.name: prepare_site(s, src) for s, src in zip(cluster.datasites, so100_sources, strict=True)
        }
        with Client(cluster.orchestrator.url, researcher_token(cluster.orchestrator)) as client:
            study = propose_tiny_study(client, names, rounds=2, aggregation="plain")
            for site in cluster.datasites:
                approve_when_asked(site, owners[site.name], study.id)
            assert study.wait(timeout=600)["status"] == "finished"
        for site in cluster.datasites:
            log = (site.dir / "worker.log").read_text()
            assert "datasite.tasks.run_round" in log and "succeeded" in log, log[-2000:]


def test_worker_killed_mid_task_is_redelivered_and_charges_once(tmp_path, so100_sources):
    require_service(5672, "RabbitMQ")
    names = unique_sites(1)
    env = {
        **os.environ,
        "FEDSILO_HEARTBEAT_SECONDS": "1",
        "FEDSILO_LEASE_SECONDS": "6",
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
    }
    with start_federation(tmp_path / "fed", names, env=env, workers=True) as cluster:
        site = cluster.datasites[0]
        owner = prepare_site(site, so100_sources[0])
        with Client(cluster.orchestrator.url, researcher_token(cluster.orchestrator)) as client:
            study = propose_tiny_study(client, names, rounds=1, local_steps=40, aggregation="plain")
            approve_when_asked(site, owner, study.id)
            headers = {"Authorization": f"Bearer {owner}"}
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                answer = httpx.get(f"{site.url}/api/studies/{study.id}/rounds/1", headers=headers)
                if answer.status_code == 200 and answer.json()["status"] == "running":
                    break
                time.sleep(0.2)
            assert answer.json()["status"] == "running"
            site.stop_worker(signal.SIGKILL)  # the worker and its pool die mid-round
            site.start_worker()
            assert study.wait(timeout=600)["status"] == "finished"
        summary = run_shell(
            site,
            (
                "from datasite.models import LedgerEntry, RoundRun;"
                f"r = RoundRun.objects.get(study='{study.id}', round=1);"
                f"c = LedgerEntry.objects.filter(study='{study.id}', kind='charge').count();"
                "print(r.status, r.attempts, c)"
            ),
        )
    status, attempts, charges = summary.split()
    assert status == "done" and int(attempts) >= 2 and charges == "1"
