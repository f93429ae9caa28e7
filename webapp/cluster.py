"""Start and stop real node processes on loopback: used by ``make demo`` and integration tests.

Each node is its own folder and its own ``runnode`` process (gunicorn), exactly as separate
organisations would run them; they talk HTTP only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
MANAGE = [sys.executable, str(REPO / "manage.py")]


class ClusterError(RuntimeError):
    """A node could not be created, started or reached."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Node:
    """One node folder and, while running, its process."""

    role: str
    name: str
    dir: Path
    port: int
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    worker: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str, stdin: str | None = None, env: dict | None = None) -> str:
        """Run a management command against this node; return its stdout."""
        result = subprocess.run(
            [*MANAGE, *args],
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"{self.name}: manage.py {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        self.log_path = self.dir / "node.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*MANAGE, "runnode", "--dir", str(self.dir), "--workers", "1"],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"{self.name} exited ({self.process.returncode}); see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ClusterError(f"{self.name} not healthy after {timeout:.0f}s; see {self.log_path}")

    def start_worker(self) -> None:
        """A Celery worker consuming this site's training queue (needs CELERY_BROKER_URL)."""
        log = (self.dir / "worker.log").open("ab")
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "webapp.celery",
                "worker",
                "-Q",
                f"site.{self.name}.train",
                "--concurrency",
                "1",
                "--prefetch-multiplier",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
                "-n",
                f"{self.name}@%h",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.worker, sig)
        self.worker = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the node (SIGTERM: graceful; SIGKILL: the whole process group, a crash)."""
        if self.worker is not None:
            self.stop_worker(sig)
        code = _stop(self.process, sig, timeout)
        self.process = None
        return code


def _stop(process: subprocess.Popen | None, sig: int, timeout: float = 30.0) -> int | None:
    """Stop a process started in its own session (SIGKILL takes its whole group, a crash)."""
    if process is None:
        return None
    if process.poll() is None:
        if sig == signal.SIGKILL:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@dataclass
class LocalCluster:
    """One orchestrator and several datasites under ``base``."""

    base: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    nodes: dict[str, Node] = field(default_factory=dict)

    def add(self, role: str, name: str) -> Node:
        port = free_port()
        # nodes share this machine's cores: one torch thread each unless told otherwise
        env = {
            "FEDSILO_TORCH_THREADS": "1",
            **{k: v for k, v in self.env.items() if k not in ("FEDSILO_NODE_DIR", "DATABASE_URL")},
        }
        node_dir = self.base / name
        self.base.mkdir(parents=True, exist_ok=True)
        node = Node(role, name, node_dir, port, {**env, "FEDSILO_NODE_DIR": str(node_dir)})
        made = subprocess.run(
            [
                *MANAGE,
                "init_node",
                "--role",
                role,
                "--name",
                name,
                "--dir",
                str(node_dir),
                "--port",
                str(port),
            ],
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise ClusterError(f"init_node {name} failed: {made.stderr.strip()}")
        self.nodes[name] = node
        return node

    @property
    def orchestrator(self) -> Node:
        return next(n for n in self.nodes.values() if n.role == "orchestrator")

    @property
    def datasites(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "datasite"]

    def start(self) -> None:
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_healthy()

    def join_all(self) -> None:
        """Invite every datasite at the orchestrator and join it."""
        orch = self.orchestrator
        for site in self.datasites:
            token = orch.manage("invite_datasite", site.name, "--quiet").strip()
            site.manage("join", "--orchestrator", orch.url, "--token", token)

    def stop(self) -> dict[str, int | None]:
        return {name: node.stop() for name, node in self.nodes.items()}

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
