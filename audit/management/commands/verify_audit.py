"""``manage.py verify_audit``: check the audit chain, exit 1 at its first broken, missing or moved link;
with ``--peers``, also against the heads this node's peers kept of it."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from audit import peers
from audit.models import AuditEvent
from audit.trail import verify_chain


class Command(BaseCommand):
    help = "Verify the hash chain and signatures of the audit log; exit 1 at the first problem."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--anchor", metavar="HASH",
                            help="a head hash published earlier: fail unless the chain still holds it")
        parser.add_argument("--allow-signer", metavar="KEY", action="append", default=[],
                            help="an earlier (rotated) signing key of this node, base64; repeatable "
                                 "(events it signed pass with a warning)")
        parser.add_argument("--peers", dest="ask_peers", action="store_true",
                            help="ask every peer node for the heads of this chain it kept and fail "
                                 "when the chain lost or changed any of them")
        parser.add_argument("--strict", action="store_true",
                            help="fail on warnings too (allowed earlier signers, peers that did not answer)")

    def handle(self, *args: Any, anchor: str | None = None, allow_signer: list[str] | None = None,
               ask_peers: bool = False, strict: bool = False, **options: Any) -> None:
        with tqdm(total=AuditEvent.objects.count(), unit="event", desc="verify audit",
                  disable=None, leave=False) as bar:
            report = verify_chain(anchor=anchor, progress=bar.update, allowed_signers=allow_signer or ())
        warnings = list(report.warnings)
        problems = [] if report.ok else [
            f"audit chain BROKEN at {report.first_problem}; the {report.count} event(s) before it verified"
        ]
        checked = []
        if ask_peers:
            own = [*peers.own_keys(), *(allow_signer or ())]
            for peer in peers.all_peers():
                answer = peers.check_peer(peer, own)
                warnings += answer.warnings
                problems += [f"audit chain does not hold what a peer saw: {p}" for p in answer.problems]
                checked.append(f"{peer.name}: {answer.checked} head(s)")
        for warning in warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        if problems:
            raise CommandError("; ".join(problems))
        if strict and warnings:
            raise CommandError("audit chain has warnings and --strict was given")
        self.stdout.write(f"audit chain OK: {report.count} events, head {report.head_hash}")
        if ask_peers:
            self.stdout.write(f"peers' heads OK ({'; '.join(checked) or 'no peers'})")
