"""``manage.py join``: register this datasite with an orchestrator."""

from django.core.management.base import BaseCommand, CommandError

from datasite.federation import JoinError, join


class Command(BaseCommand):
    help = "Join an orchestrator with an invitation token, exchanging URLs and public keys."

    def add_arguments(self, parser):
        parser.add_argument("--orchestrator", required=True, help="orchestrator URL")
        parser.add_argument("--token", required=True, help="invitation token from its admin")

    def handle(self, *args, orchestrator, token, **options):
        try:
            link = join(orchestrator, token)
        except JoinError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"joined orchestrator {link.name!r} at {link.url}"))
