"""``manage.py compliance_report``: a compliance report of this node as HTML, PDF or signed JSON."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from compliance import html, pdf, signing
from compliance.reports import build_report
from compliance.scope import ReportError, make_scope


def _actor() -> str:
    """Who ran the command, as the audit log names them."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in minimal containers
        return "cli"


class Command(BaseCommand):
    help = ("Generate a compliance report (record of processing, DPIA inputs, approvals, consent, "
            "budgets, data access, event log) for a study, the whole site or a date range. "
            "JSON reports are signed: FILE.sig holds the detached Ed25519 signature.")

    def add_arguments(self, parser: CommandParser) -> None:
        scope = parser.add_argument_group("scope (choose one)")
        scope.add_argument("--study", metavar="ID", help="one study")
        scope.add_argument("--site", action="store_true", help="everything this node recorded")
        scope.add_argument("--since", metavar="DATE", help="start of a range (YYYY-MM-DD or ISO datetime)")
        scope.add_argument("--until", metavar="DATE", help="end of a range, inclusive")
        parser.add_argument("--format", choices=("html", "pdf", "json"), default="json")
        parser.add_argument("--out", metavar="FILE", required=True, help="where to write the report")

    def handle(self, *args: Any, **opts: Any) -> None:
        out = Path(opts["out"])
        if not out.parent.is_dir():
            raise CommandError(f"folder {out.parent} does not exist")
        try:
            scope = make_scope(opts["study"], opts["site"], opts["since"], opts["until"])
            report = build_report(scope, _actor(), fmt=opts["format"])
        except ReportError as exc:
            raise CommandError(str(exc)) from exc
        if opts["format"] == "json":
            _, sig = signing.write_signed(report, out)
            written = f"{out} and its signature {sig}"
        elif opts["format"] == "pdf":
            out.write_bytes(pdf.render_pdf(report))
            written = str(out)
        else:
            out.write_text(html.render_html(report), encoding="utf-8")
            written = str(out)
        chain = report["chain"]
        if not chain["ok"]:
            self.stderr.write(self.style.ERROR(f"warning: audit chain BROKEN at {chain['first_problem']}"))
        self.stdout.write(f"wrote {written}: report #{report['generation_event']['seq']}, "
                          f"audit head {chain['head_hash']}")
