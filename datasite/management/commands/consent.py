"""``manage.py consent``: record consent given or withdrawn, one by one or from a CSV file."""

import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from common.errors import ServiceError
from datasite.consent import record_consent

COLUMNS = ("contributor", "purpose", "given", "evidence")
TRUE, FALSE = {"1", "true", "yes", "given"}, {"0", "false", "no", "withdrawn"}


class Command(BaseCommand):
    help = "Record consent: `consent give|withdraw --contributor ID` or `consent import FILE.csv`."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        for action in ("give", "withdraw"):
            p = sub.add_parser(action)
            p.add_argument("--contributor", required=True)
            p.add_argument("--purpose", default="policy-training")
            p.add_argument("--evidence", default="")
        imp = sub.add_parser("import", help=f"CSV with a header: {','.join(COLUMNS)}")
        imp.add_argument("file", type=Path)

    def handle(self, *args, action, **options):
        if action == "import":
            count = self._import(options["file"])
            self.stdout.write(self.style.SUCCESS(f"recorded {count} consent events"))
            return
        try:
            record_consent(options["contributor"], options["purpose"], action == "give", options["evidence"])
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        state = "given" if action == "give" else "withdrawn"
        self.stdout.write(f"{options['contributor']}: consent {state} for {options['purpose']}")

    def _import(self, path: Path) -> int:
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        with path.open(newline="") as fh, transaction.atomic():
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(COLUMNS[:3]) <= set(reader.fieldnames):
                raise CommandError(f"{path}: the header must name {', '.join(COLUMNS)}")
            count = 0
            for line, row in enumerate(reader, start=2):
                given = (row["given"] or "").strip().lower()
                if given not in TRUE | FALSE:
                    raise CommandError(f"{path}:{line}: 'given' must be true or false, not {row['given']!r}")
                try:
                    record_consent(
                        row["contributor"].strip(),
                        row["purpose"].strip(),
                        given in TRUE,
                        (row.get("evidence") or "").strip(),
                    )
                except ServiceError as exc:
                    raise CommandError(f"{path}:{line}: {exc}") from exc
                count += 1
        return count
