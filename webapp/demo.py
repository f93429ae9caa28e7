"""``make demo``: one orchestrator and datasites as separate processes on loopback.

Every node is its own folder with its own SQLite database; they talk HTTP only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

from webapp.cluster import LocalCluster

SITES = ("site-a", "site-b", "site-c")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--sites", type=int, default=len(SITES))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    shutil.rmtree(out / "nodes", ignore_errors=True)
    (out / "nodes").mkdir(parents=True)
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "1"}
    with LocalCluster(out / "nodes", env=env) as cluster:
        print("creating nodes …", flush=True)
        orch = cluster.add("orchestrator", "orchestrator")
        for name in SITES[: args.sites]:
            cluster.add("datasite", name)
        orch.manage("create_user", "--username", "researcher", "--role", "researcher", "--no-password")
        token = orch.manage("token", "issue", "--user", "researcher", "--name", "demo").strip()
        print("starting processes …", flush=True)
        cluster.start()
        for node in cluster.nodes.values():
            print(f"  {node.role:<12} {node.name:<13} {node.url}  pid {node.process.pid}")
        cluster.join_all()
        time.sleep(2)
        sites = httpx.get(
            f"{orch.url}/api/federation/datasites", headers={"Authorization": f"Bearer {token}"}
        ).json()
        print("\nregistered datasites (as the researcher sees them):")
        print(f"  {'name':<10} {'status':<8} {'url':<26} last heartbeat")
        for s in sites:
            print(f"  {s['name']:<10} {s['status']:<8} {s['url']:<26} {s['last_heartbeat']}")
        print("\nshutting down …", flush=True)
        codes = cluster.stop()
    clean = all(code == 0 for code in codes.values())
    print("all nodes stopped cleanly" if clean else f"unclean exits: {codes}")
    print(f"node folders (config, keys, databases, logs): {out / 'nodes'}")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
