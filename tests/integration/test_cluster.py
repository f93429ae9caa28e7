"""Real node processes on loopback: init, serve, join, heartbeat, clean shutdown."""

import os
import time

import httpx
import pytest

from webapp.cluster import ClusterError, LocalCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path):
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "0.5"}
    with LocalCluster(tmp_path, env=env) as c:
        c.add("orchestrator", "orch")
        c.add("datasite", "site-a")
        c.add("datasite", "site-b")
        c.start()
        yield c


def researcher_token(cluster) -> str:
    orch = cluster.orchestrator
    orch.manage("create_user", "--username", "rosa", "--role", "researcher", "--no-password")
    return orch.manage("token", "issue", "--user", "rosa").strip()


def test_datasites_join_and_send_heartbeats(cluster):
    cluster.join_all()
    token = researcher_token(cluster)
    headers = {"Authorization": f"Bearer {token}"}

    def listing():
        return httpx.get(f"{cluster.orchestrator.url}/api/federation/datasites", headers=headers).json()

    sites = {s["name"]: s for s in listing()}
    assert set(sites) == {"site-a", "site-b"}
    assert all(s["status"] == "joined" for s in sites.values())
    first = sites["site-a"]["last_heartbeat"]
    deadline = time.monotonic() + 20

    def latest():
        return {s["name"]: s for s in listing()}["site-a"]["last_heartbeat"]

    while time.monotonic() < deadline and latest() == first:
        time.sleep(0.3)
    assert latest() > first
    node = httpx.get(f"{cluster.datasites[0].url}/api/node", headers=headers)
    assert node.status_code == 401  # a token of the orchestrator means nothing at a datasite


def test_join_failures_are_clear_and_keep_nothing(cluster):
    site = cluster.datasites[0]
    with pytest.raises(ClusterError, match="refused the token"):
        site.manage("join", "--orchestrator", cluster.orchestrator.url, "--token", "fst_0_bad")
    with pytest.raises(ClusterError, match="cannot reach the orchestrator"):
        site.manage("join", "--orchestrator", "http://127.0.0.1:9", "--token", "fst_0_bad")
    leftovers = site.manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from common.models import ApiToken;"
        "from datasite.models import OrchestratorLink;"
        "print(ApiToken.objects.count(), OrchestratorLink.objects.count())",
    )
    assert leftovers.split() == ["0", "0"]


def test_nodes_shut_down_cleanly(cluster):
    codes = cluster.stop()
    assert all(code == 0 for code in codes.values()), codes
    for node in cluster.nodes.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{node.url}/health", timeout=1)
