"""``manage.py heartbeat``: tell the orchestrator this site is alive (once, or in a loop)."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from datasite.federation import send_heartbeat


class Command(BaseCommand):
    help = "Send a heartbeat to the orchestrator; --loop repeats it (runnode starts this)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true")
        parser.add_argument("--every", type=float, default=settings.FEDSILO_HEARTBEAT_SECONDS)

    def handle(self, *args, loop, every, **options):
        if not loop:
            if not send_heartbeat():
                raise CommandError("heartbeat not delivered: is this site joined and the orchestrator up?")
            self.stdout.write("heartbeat delivered")
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.is_set():
            send_heartbeat()
            stop.wait(every)
