"""Orchestrator state: the federation's datasites."""

from django.conf import settings
from django.db import models


class Datasite(models.Model):
    """A member datasite. Invited by a node admin, then joined by the site itself."""

    class Status(models.TextChoices):
        INVITED = "invited"
        JOINED = "joined"

    name = models.CharField(max_length=63, unique=True)
    account = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="datasite"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.INVITED)
    url = models.URLField(max_length=500, blank=True)
    signing_key = models.CharField(max_length=64, blank=True)
    kex_key = models.CharField(max_length=64, blank=True)
    callback_token = models.CharField(
        max_length=200, blank=True, help_text="token this orchestrator presents to the site"
    )
    invited_at = models.DateTimeField(auto_now_add=True)
    joined_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    last_status = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
