"""``manage.py verify_report FILE SIGNATURE``: exit 0 if a JSON report is authentic, else 1 saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance import signing


class Command(BaseCommand):
    help = ("Verify a signed JSON compliance report: its Ed25519 signature, that it was signed by "
            "this node, and that the audit head it names is in this node's chain.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="the JSON report")
        parser.add_argument("signature", help="its detached signature (FILE.sig)")

    def handle(self, *args: Any, file: str, signature: str, **opts: Any) -> None:
        try:
            report = signing.load_report(Path(file).read_bytes())
            sig = Path(signature).read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        except ValueError as exc:
            raise CommandError(f"{file} is not a JSON report: {exc}") from exc
        result = signing.verify_report(report, sig)
        if not result.ok:
            raise CommandError(result.summary(report))
        self.stdout.write(result.summary(report))
