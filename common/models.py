"""API tokens for people and peer nodes: stored as SHA-256 digests, revocable, expiring."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from common.signals import token_issued, token_revoked

TOKEN_PREFIX = "fst"  # noqa: S105  (a public marker, not a secret)
DEFAULT_LIFETIME = timedelta(days=90)


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token ``fst_<key>_<secret>``; only ``key`` and the digest are stored.

    Tokens carry 256 bits of randomness, so a plain SHA-256 digest is safe to store
    (no password-style stretching is needed) and lookups stay constant time.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        db_table = "webapp_apitoken"  # the table keeps its name from before the move to common

    def __str__(self) -> str:
        return f"{self.name} ({self.key}) for {self.user}"

    @classmethod
    def issue(cls, user, name: str, lifetime: timedelta = DEFAULT_LIFETIME) -> tuple[ApiToken, str]:
        """Create a token and return it with its plaintext, which is shown once."""
        if lifetime <= timedelta(0):
            raise ValueError("token lifetime must be positive")
        key = secrets.token_hex(8)
        raw = f"{TOKEN_PREFIX}_{key}_{secrets.token_urlsafe(32)}"
        with transaction.atomic():
            token = cls.objects.create(
                user=user,
                name=name,
                key=key,
                digest=_digest(raw),
                expires_at=timezone.now() + lifetime,
            )
            token_issued.send(cls, token=token)
        return token, raw

    @classmethod
    def authenticate(cls, raw: str) -> ApiToken | None:
        """The live token matching ``raw``, or None (unknown, wrong secret, expired, revoked)."""
        parts = raw.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return None
        token = cls.objects.select_related("user").filter(key=parts[1]).first()
        if token is None or not hmac.compare_digest(token.digest, _digest(raw)):
            return None
        if not token.is_live or not token.user.is_active:
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
        return token

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            with transaction.atomic():
                self.save(update_fields=["revoked_at"])
                token_revoked.send(type(self), token=self)
