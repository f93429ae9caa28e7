"""``manage.py run_engine``: drive active studies (runnode starts it at an orchestrator)."""

import signal
import threading

from django.core.management.base import BaseCommand

from orchestrator.engine import run_forever


class Command(BaseCommand):
    help = "Advance every active study from its persisted state until stopped."

    def add_arguments(self, parser):
        parser.add_argument("--poll", type=float, default=1.0)

    def handle(self, *args, poll, **options):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        run_forever(poll, stop)
