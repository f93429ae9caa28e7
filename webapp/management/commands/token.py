"""``manage.py token issue|revoke|list``: API tokens for people and peer nodes."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from common.models import ApiToken


class Command(BaseCommand):
    help = "Issue, revoke or list API tokens (stored hashed; the plaintext is shown once)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        issue = sub.add_parser("issue")
        issue.add_argument("--user", required=True)
        issue.add_argument("--name", default="api")
        issue.add_argument("--days", type=int, default=90)
        revoke = sub.add_parser("revoke")
        revoke.add_argument("key", help="the token's key (second field of fst_<key>_…)")
        listing = sub.add_parser("list")
        listing.add_argument("--user")

    def handle(self, *args, action, **options):
        getattr(self, f"_{action}")(**options)

    def _issue(self, user, name, days, **_):
        account = get_user_model().objects.filter(username=user).first()
        if account is None:
            raise CommandError(f"no user {user!r}: create it with manage.py create_user")
        if days <= 0:
            raise CommandError("--days must be positive")
        _, raw = ApiToken.issue(account, name, timedelta(days=days))
        self.stdout.write(raw)

    def _revoke(self, key, **_):
        token = ApiToken.objects.filter(key=key).first()
        if token is None:
            raise CommandError(f"no token with key {key!r} (see: manage.py token list)")
        token.revoke()
        self.stdout.write(self.style.SUCCESS(f"revoked {token}"))

    def _list(self, user=None, **_):
        tokens = ApiToken.objects.select_related("user")
        if user:
            tokens = tokens.filter(user__username=user)
        for t in tokens:
            state = "live" if t.is_live else ("revoked" if t.revoked_at else "expired")
            self.stdout.write(
                f"{t.key}  {t.user.username:<24} {t.name:<24} {state:<8} expires {t.expires_at:%Y-%m-%d}"
            )
