"""``manage.py runnode``: serve a node with gunicorn, plus its loop: heartbeats at a datasite,
the round engine at an orchestrator."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from common.node import NodeError, load_node


class Command(BaseCommand):
    help = "Serve a node folder with a production WSGI server (gunicorn)."

    def add_arguments(self, parser):
        parser.add_argument("--dir", required=True, type=Path)
        parser.add_argument("--port", type=int, help="port to bind (default: from the node URL)")
        parser.add_argument("--host", default="", help="address to bind (default: from the node URL)")
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--threads", type=int, default=4)

    def handle(self, *args, dir, port, host, workers, threads, **options):
        try:
            node = load_node(dir)
        except NodeError as exc:
            raise CommandError(str(exc)) from exc
        if node is None:
            raise CommandError("give the node folder with --dir")
        env = {**os.environ, "FEDSILO_NODE_DIR": str(node.dir), "DJANGO_SETTINGS_MODULE": "webapp.settings"}
        manage = [sys.executable, str(Path(__file__).resolve().parents[3] / "manage.py")]
        for step in (["migrate", "--noinput"], ["collectstatic", "--noinput", "-v0"]):
            done = subprocess.run([*manage, *step], env=env, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
                raise CommandError(f"cannot prepare the node ({step[0]}): {tail}")
        bind = f"{host or node.host}:{port or node.port}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "webapp.wsgi:application",
                "--bind",
                bind,
                "--workers",
                str(workers),
                "--threads",
                str(threads),
                "--timeout",
                "600",
                "--graceful-timeout",
                "15",
                "--access-logfile",
                "-",
                "--log-level",
                "warning",
            ],
            env=env,
        )
        stop = threading.Event()

        def forward(signum, _frame):
            stop.set()
            server.send_signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        self.stdout.write(f"{node.role} {node.name!r} serving on http://{bind} (pid {server.pid})")
        self.stdout.flush()
        loop = ["heartbeat", "--loop"] if node.role == "datasite" else ["run_engine"]
        helper = subprocess.Popen([*manage, *loop], env=env)
        code = server.wait()
        helper.terminate()
        helper.wait(timeout=30)
        if code not in (0, -signal.SIGTERM) and not stop.is_set():
            raise CommandError(f"the server exited with status {code}")
        self.stdout.write(f"{node.name} stopped")
