"""Helpers to stand up a federation of real node processes with SO-100 data (tests and demo)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import httpx

from datasite.training.dataset import episode_contributors
from webapp.cluster import LocalCluster, Node

TINY_ACT = {
    "dim_model": 64, "n_heads": 2, "dim_feedforward": 128, "n_encoder_layers": 1,
    "n_decoder_layers": 1, "n_vae_encoder_layers": 1, "chunk_size": 5, "n_action_steps": 5,
    "latent_dim": 8, "freeze_backbone": True, "cameras": ["observation.images.top"],
}


def prepare_site(site: Node, seed: int, profile: str, episodes: int = 6, contributors: int = 3,
                 image_size: str = "32x40", epsilon_max: float = 50.0) -> str:
    """Generate SO-100 data at a site, register it, record consent; return a data owner token."""
    root = site.dir / "data" / "so100"
    site.manage("generate_so100", "--root", str(root), "--episodes", str(episodes), "--contributors",
                str(contributors), "--seed", str(seed), "--profile", profile, "--image-size", image_size)
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


def approve_when_asked(site: Node, owner_token: str, study_id: str, timeout: float = 60.0,
                       deny_reason: str | None = None) -> dict:
    """Wait for the code request to arrive, then approve (or deny) it as the data owner."""
    headers = {"Authorization": f"Bearer {owner_token}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = httpx.get(f"{site.url}/api/code-requests/{study_id}", headers=headers)
        if response.status_code == 200:
            request = response.json()
            action = "deny" if deny_reason else "approve"
            decided = httpx.post(f"{site.url}/api/code-requests/{study_id}/{action}", headers=headers,
                                 json={"code_sha256": request["code_sha256"], "reason": deny_reason or ""})
            decided.raise_for_status()
            return decided.json()
        time.sleep(0.3)
    raise TimeoutError(f"no code request for {study_id} reached {site.name}")


def start_federation(base: Path, sites: int = 2, env: dict | None = None) -> LocalCluster:
    cluster = LocalCluster(base, env=env) if env else LocalCluster(base)
    cluster.add("orchestrator", "orch")
    for i in range(sites):
        cluster.add("datasite", f"site-{chr(ord('a') + i)}")
    cluster.start()
    cluster.join_all()
    return cluster
