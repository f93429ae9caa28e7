"""Datasite state: the orchestrator it belongs to."""

from django.db import models


class OrchestratorLink(models.Model):
    """The orchestrator this datasite joined (one per site)."""

    name = models.CharField(max_length=63)
    url = models.URLField(max_length=500)
    signing_key = models.CharField(max_length=64)
    kex_key = models.CharField(max_length=64)
    token = models.CharField(max_length=200, help_text="token this site presents to the orchestrator")
    joined_at = models.DateTimeField(auto_now_add=True)
    last_heartbeat_ok = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.url}"
