"""``manage.py invite_datasite NAME``: create a datasite's account and its join token."""

from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from orchestrator.federation import FederationError, invite_datasite


class Command(BaseCommand):
    help = "Invite a datasite: prints the token its admin passes to `manage.py join`."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--days", type=int, default=7, help="token lifetime")
        parser.add_argument("--quiet", action="store_true", help="print the token only")

    def handle(self, *args, name, days, quiet, **options):
        if settings.ROLE != "orchestrator":
            raise CommandError("invite_datasite runs at an orchestrator node (FEDSILO_NODE_DIR)")
        try:
            _, token = invite_datasite(name, timedelta(days=days))
        except FederationError as exc:
            raise CommandError(str(exc)) from exc
        if quiet:
            self.stdout.write(token)
            return
        self.stdout.write(self.style.SUCCESS(f"invited {name!r}; the token is shown once:"))
        self.stdout.write(token)
        self.stdout.write(
            f"at the site: python manage.py join --orchestrator {settings.PUBLIC_URL} --token <token>"
        )
