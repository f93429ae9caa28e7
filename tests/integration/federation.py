"""Helpers to stand up a federation of real node processes with SO-100 data (tests and demo)."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import httpx

from datasite.training.dataset import episode_contributors
from datasite.training.recipes.act import TINY_ACT
from tests.integration.fault_proxy import FaultProxy
from webapp.cluster import LocalCluster, Node


def prepare_site(site: Node, source: Path, epsilon_max: float = 50.0) -> str:
    """Give a site a copy of an SO-100 dataset, register it, record every contributor's consent;
    return a data owner's API token."""
    root = site.dir / "data" / "so100"
    shutil.copytree(source, root)
    site.manage("register_dataset", "--name", "so100", "--root", str(root), "--epsilon-max", str(epsilon_max))
    people = sorted(set(episode_contributors(root).values()))
    consent_csv = site.dir / "consent.csv"
    with consent_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["contributor", "purpose", "given", "evidence"])
        writer.writerows([[p, "policy-training", "true", f"form-{p}"] for p in people])
    site.manage("consent", "import", str(consent_csv))
    site.manage("create_user", "--username", "owner", "--role", "data_owner", "--no-password")
    return site.manage("token", "issue", "--user", "owner").strip()


def researcher_token(orch: Node) -> str:
    orch.manage("create_user", "--username", "researcher", "--role", "researcher", "--no-password")
    return orch.manage("token", "issue", "--user", "researcher").strip()


def approve_when_asked(
    site: Node, owner_token: str, study_id: str, timeout: float = 60.0, deny_reason: str | None = None
) -> dict:
    """Wait for the code request to arrive, then approve (or deny) it as the data owner."""
    headers = {"Authorization": f"Bearer {owner_token}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{site.url}/api/code-requests/{study_id}", headers=headers)
        if response.status_code == 200:
            request = response.json()
            action = "deny" if deny_reason else "approve"
            decided = httpx.post(
                f"{site.url}/api/code-requests/{study_id}/{action}",
                headers=headers,
                json={"code_sha256": request["code_sha256"], "reason": deny_reason or ""},
            )
            decided.raise_for_status()
            return decided.json()
        time.sleep(0.3)
    raise TimeoutError(f"no code request for {study_id} reached {site.name}")


def start_federation(
    base: Path,
    site_names: list[str],
    env: dict | None = None,
    workers: bool = False,
    through: dict[str, FaultProxy] | None = None,
) -> LocalCluster:
    """An orchestrator and datasites, started and joined (with Celery workers if asked); a site
    named in ``through`` joins through that proxy, which then forwards to the orchestrator."""
    cluster = LocalCluster(base, env=env) if env else LocalCluster(base)
    cluster.add("orchestrator", "orch")
    for name in site_names:
        cluster.add("datasite", name)
    try:
        cluster.start()
        orch = cluster.orchestrator
        for site in cluster.datasites:
            url = orch.url
            proxy = (through or {}).get(site.name)
            if proxy is not None:
                proxy.target, url = orch.url, proxy.url
            token = orch.manage("invite_datasite", site.name, "--quiet").strip()
            site.manage("join", "--orchestrator", url, "--token", token)
        if workers:
            for site in cluster.datasites:
                site.start_worker()
    except BaseException:  # leave no node process behind
        cluster.stop()
        raise
    return cluster


def propose_tiny_study(client, site_names: list[str], rounds: int, title: str = "tiny act", **plan):
    """A small act-small FedProx study with episode-level DP over every named site."""
    settings = {
        "local_steps": 3,
        "batch_size": 2,
        "min_sites": len(site_names),
        "round_timeout_s": 300,
        "dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "frames_per_episode": 2},
        **plan,
    }
    return client.propose_study(
        title,
        datasets={name: "so100" for name in site_names},
        rounds=rounds,
        recipe="act-small",
        config=TINY_ACT,
        strategy="fedprox",
        mu=0.01,
        **settings,
    )


def run_shell(node: Node, code: str) -> str:
    """Run Python in a node's Django context and return what it printed."""
    return node.manage("shell", "-v", "0", "-c", code)
