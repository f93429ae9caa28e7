"""``manage.py create_user``: a person with one or more roles."""

import os
import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from common.roles import PERSON_ROLES


class Command(BaseCommand):
    help = "Create a user with roles. The password comes from --password-env VAR or stdin."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument(
            "--role", action="append", required=True, help=f"repeatable; one of: {', '.join(PERSON_ROLES)}"
        )
        parser.add_argument("--email", default="")
        parser.add_argument("--password-env", help="name of an environment variable holding it")
        parser.add_argument("--no-password", action="store_true", help="API-token-only account")

    def handle(self, *args, username, role, email, password_env, no_password, **options):
        unknown = sorted(set(role) - set(PERSON_ROLES))
        if unknown:
            raise CommandError(f"unknown role {', '.join(unknown)}: choose from {', '.join(PERSON_ROLES)}")
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            raise CommandError(f"user {username!r} already exists")
        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"environment variable {password_env} is empty or unset")
        elif not no_password:
            password = sys.stdin.readline().rstrip("\n")
            if not password:
                raise CommandError("no password on stdin: pipe one, or use --password-env VAR")
        user = User(username=username, email=email)
        if password is not None:
            try:
                validate_password(password, user)
            except ValidationError as exc:
                raise CommandError("weak password: " + " ".join(exc.messages)) from exc
        with transaction.atomic():
            if password is None:
                user.set_unusable_password()
            else:
                user.set_password(password)
            user.save()
            user.groups.add(*Group.objects.filter(name__in=role))
        self.stdout.write(self.style.SUCCESS(f"created {username!r} with roles {', '.join(role)}"))
