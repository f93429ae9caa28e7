"""``make demo``: a federated study across three datasites, as separate processes on loopback.

One orchestrator and three datasites, each its own ``runnode`` process with its own SQLite
database and data folder; they talk HTTP only. Each site generates non-IID SO-100 data
(lab-a, lab-b, lab-c profiles), registers it with a privacy budget and records its
contributors' consent. A researcher proposes an ``act-small`` FedProx study with
episode-level DP and secure aggregation (``--aggregation``: secagg by default, he or plain);
each data owner approves it through the API, as themselves. The study runs,
and the demo prints a per-round table and writes the final model, metrics and a loss plot.

With ``CELERY_BROKER_URL`` set (Redis or RabbitMQ), every site also runs a Celery worker on
its training queue and the rounds run there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

from datasite.training.recipes.act import TINY_ACT
from webapp.cluster import LocalCluster, Node

PROFILES = ("lab-a", "lab-b", "lab-c")
EPSILON_MAX = 20.0  # each dataset's budget across all studies
DEMO_ACT = {**TINY_ACT, "use_vae": False, "latent_dim": 32}  # no VAE, act-small's latent width


def _prepare_site(site: Node, profile: str, seed: int, episodes: int, image_size: str) -> str:
    """Data, registration, consent and a data owner at one site; returns the owner's token."""
    from datasite.training.dataset import episode_contributors

    root = site.dir / "data" / "so100"
    site.manage(
        "generate_so100",
        "--root",
        str(root),
        "--episodes",
        str(episodes),
        "--contributors",
        str(max(2, episodes // 4)),
        "--seed",
        str(seed),
        "--profile",
        profile,
        "--image-size",
        image_size,
    )
    site.manage("register_dataset", "--name", "so100", "--root", str(root), "--epsilon-max", str(EPSILON_MAX))
    consent = site.dir / "consent.csv"
    with consent.open("w", newline="") as fh:
        rows = csv.writer(fh)
        rows.writerow(["contributor", "purpose", "given", "evidence"])
        for person in sorted(set(episode_contributors(root).values())):
            rows.writerow([person, "policy-training", "true", f"signed-form/{person}"])
    site.manage("consent", "import", str(consent))
    site.manage("create_user", "--username", f"owner-{site.name}", "--role", "data_owner", "--no-password")
    return site.manage("token", "issue", "--user", f"owner-{site.name}", "--name", "demo").strip()


def _approve(site: Node, token: str, study_id: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(300):
        shown = httpx.get(f"{site.url}/api/code-requests/{study_id}", headers=headers)
        if shown.status_code == 200:
            request = shown.json()
            decided = httpx.post(
                f"{site.url}/api/code-requests/{study_id}/approve",
                headers=headers,
                json={"code_sha256": request["code_sha256"], "reason": "reviewed for the demo"},
            )
            decided.raise_for_status()
            return decided.json()
        time.sleep(0.3)
    raise TimeoutError(f"{site.name} never received the code request")


def _table(rounds: list[dict], sites: list[str]) -> str:
    head = ["round", *[f"{s} loss" for s in sites], "held-out loss", *[f"ε {s}" for s in sites]]
    lines = ["  ".join(f"{h:>13}" for h in head)]
    for r in rounds:
        held = "" if r.get("heldout_loss") is None else f"{r['heldout_loss']:.4f}"
        cells = [str(r["round"]) + (" (eval)" if r["eval_only"] else "")]
        cells += [
            "" if r["eval_only"] else f"{r['sites'].get(s, {}).get('loss_after', float('nan')):.4f}"
            for s in sites
        ]
        cells.append(held)
        cells += ["" if r["eval_only"] else f"{(r['epsilon'].get(f'{s}/so100') or 0):.3f}" for s in sites]
        lines.append("  ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def _plot(rounds: list[dict], sites: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in rounds if not r["eval_only"]]
    for s in sites:
        ax.plot(
            [r["round"] for r in train],
            [r["sites"][s]["loss_after"] for r in train],
            "o-",
            label=f"{s} (local)",
        )
    held = [(r["round"] - 1, r["heldout_loss"]) for r in rounds if r.get("heldout_loss") is not None]
    ax.plot([x for x, _ in held], [y for _, y in held], "k--s", label="global model, held-out")
    ax.set_xlabel("round (held-out loss: of the model after that round)")
    ax.set_ylabel("loss")
    ax.set_title("fedsilo demo: act-small, FedProx, episode-level DP")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=48, help="episodes per site")
    parser.add_argument("--local-steps", type=int, default=12)
    parser.add_argument("--noise", type=float, default=1.0, help="DP noise multiplier σ")
    parser.add_argument("--image-size", default="48x64")
    parser.add_argument(
        "--aggregation",
        choices=("secagg", "he", "plain"),
        default="secagg",
        help="secagg: pairwise masking (default); he: CKKS; plain: updates in the clear",
    )
    args = parser.parse_args(argv)
    from orchestrator.client import Client

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "nodes").mkdir(parents=True)
    broker = os.environ.get("CELERY_BROKER_URL", "")
    env = {**os.environ, "FEDSILO_HEARTBEAT_SECONDS": "2"}
    started = time.monotonic()
    with LocalCluster(out / "nodes", env=env) as cluster:
        print("creating one orchestrator and three datasites …", flush=True)
        orch = cluster.add("orchestrator", "orchestrator")
        sites = [cluster.add("datasite", f"site-{c}") for c in "abc"]
        cluster.start()
        for node in cluster.nodes.values():
            print(f"  {node.role:<12} {node.name:<13} {node.url}  pid {node.process.pid}")
        cluster.join_all()
        if broker:
            print(f"starting a Celery worker per site on {broker.split('@')[-1]} …")
            for site in sites:
                site.start_worker()
        print("each site generates its own SO-100 data, registers it and records consent …", flush=True)
        owners = {
            s.name: _prepare_site(s, p, i, args.episodes, args.image_size)
            for i, (s, p) in enumerate(zip(sites, PROFILES, strict=True))
        }
        orch.manage("create_user", "--username", "researcher", "--role", "researcher", "--no-password")
        token = orch.manage("token", "issue", "--user", "researcher", "--name", "demo").strip()
        with Client(orch.url, token) as client:
            study = client.propose_study(
                "act-small FedProx on SO-100 (demo)",
                datasets={s.name: "so100" for s in sites},
                rounds=args.rounds,
                recipe="act-small",
                config=DEMO_ACT,
                strategy="fedprox",
                mu=0.01,
                local_steps=args.local_steps,
                batch_size=8,
                lr=3e-4,
                min_sites=3,
                round_timeout_s=600,
                aggregation=args.aggregation,
                # pre-weighted update values lie far inside ±0.05; weights up to 2000 frames
                secure={"clip": 0.05, "max_weight": 2000.0},
                dp={
                    "noise_multiplier": args.noise,
                    "clip_norm": 1.0,
                    "unit": "episode",
                    "frames_per_episode": 4,
                },
            )
            print(
                f"\nthe researcher proposed study {study.id} ({args.aggregation} aggregation); "
                "the data owners review it:"
            )
            for site in sites:
                decision = _approve(site, owners[site.name], study.id)
                print(
                    f"  {site.name}: {decision['status']} by {decision['decided_by']}, projected ε "
                    f"{decision['projected_epsilon']['so100']:.2f} of {EPSILON_MAX:g}"
                )
            print()
            study.wait(progress=True, poll=1.0)
            rounds = study.metrics()
            names = [s.name for s in sites]
            print("\n" + _table(rounds, names))
            for r in rounds:
                if r.get("secure"):
                    sec = r["secure"]
                    print(
                        f"  round {r['round']}: the orchestrator saw only the {sec['mode']} sum of "
                        f"{', '.join(sec['survivors'])}"
                    )
            study.download_model(out / "model.safetensors")
            (out / "metrics.json").write_text(
                json.dumps({"study": study.status(), "rounds": rounds}, indent=2)
            )
            _plot(rounds, names, out / "loss.png")
        print("\nshutting down …", flush=True)
        codes = cluster.stop()
    clean = all(code == 0 for code in codes.values())
    print("all nodes stopped cleanly" if clean else f"unclean exits: {codes}")
    print(
        f"\nwritten to {out}: model.safetensors, metrics.json, loss.png, nodes/ "
        f"(each node's folder, database and log); {time.monotonic() - started:.0f} s in all"
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
