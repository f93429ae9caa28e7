"""``manage.py verify_audit``: check the audit chain, exit 1 at its first broken, missing or moved link."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from audit.models import AuditEvent
from audit.trail import verify_chain


class Command(BaseCommand):
    help = "Verify the hash chain and signatures of the audit log; exit 1 at the first problem."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--anchor", metavar="HASH",
                            help="a head hash published earlier: fail unless the chain still holds it")
        parser.add_argument("--strict", action="store_true",
                            help="fail on warnings too (events signed by another key than this node's)")

    def handle(self, *args: Any, anchor: str | None = None, strict: bool = False, **options: Any) -> None:
        with tqdm(total=AuditEvent.objects.count(), unit="event", desc="verify audit",
                  disable=None, leave=False) as bar:
            report = verify_chain(anchor=anchor, progress=bar.update)
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        if not report.ok:
            raise CommandError(
                f"audit chain BROKEN at {report.first_problem}; "
                f"the {report.count} event(s) before it verified"
            )
        if strict and report.warnings:
            raise CommandError("audit chain has warnings and --strict was given")
        self.stdout.write(f"audit chain OK: {report.count} events, head {report.head_hash}")
