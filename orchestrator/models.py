"""Orchestrator state: the federation's datasites, studies, rounds and received updates."""

import uuid

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


def new_study_id() -> str:
    return uuid.uuid4().hex


class Study(models.Model):
    """A proposed federated training run and its state machine.

    proposed → awaiting_approval → preparing → running (round r, phase) → finished,
    or failed / cancelled.
    """

    class Status(models.TextChoices):
        PROPOSED = "proposed"
        AWAITING_APPROVAL = "awaiting_approval"
        PREPARING = "preparing"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"
        CANCELLED = "cancelled"

    ACTIVE = (Status.PROPOSED, Status.AWAITING_APPROVAL, Status.PREPARING, Status.RUNNING)

    id = models.CharField(max_length=32, primary_key=True, default=new_study_id, editable=False)
    title = models.CharField(max_length=200)
    researcher = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="studies")
    version = models.PositiveIntegerField(default=1)
    code = models.JSONField()
    code_sha256 = models.CharField(max_length=64)
    plan = models.JSONField()
    plan_sha256 = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PROPOSED)
    current_round = models.PositiveIntegerField(default=0)
    phase = models.CharField(max_length=20, blank=True)
    error = models.TextField(blank=True)
    norm_stats = models.JSONField(default=dict, blank=True)
    manifest = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"{self.title} ({self.id[:8]}, {self.status})"


class StudySite(models.Model):
    """A site's part in a study: the dataset it trains on and its data owner's decision."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        REVOKED = "revoked"
        UNREACHABLE = "unreachable"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="sites")
    datasite = models.ForeignKey(Datasite, on_delete=models.PROTECT, related_name="studies")
    dataset = models.CharField(max_length=63)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField(blank=True)
    projected_epsilon = models.FloatField(null=True, blank=True)
    episodes = models.PositiveIntegerField(null=True, blank=True)
    request_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["datasite__name"]
        constraints = [models.UniqueConstraint(fields=["study", "datasite"], name="one_site_entry")]

    def __str__(self) -> str:
        return f"{self.datasite_id} in {self.study_id[:8]} ({self.status})"


class Round(models.Model):
    """One round of a study: who was asked, who answered, what came out."""

    class Status(models.TextChoices):
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    eval_only = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    participants = models.JSONField(default=list)
    dropped = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    deadline = models.DateTimeField()
    last_sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["study", "number"]
        constraints = [models.UniqueConstraint(fields=["study", "number"], name="one_round_number")]

    def __str__(self) -> str:
        return f"round {self.number} of {self.study_id[:8]} ({self.status})"


class SiteUpdate(models.Model):
    """What one site returned for one round (the update itself is a file; plain mode only)."""

    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="updates")
    datasite = models.ForeignKey(Datasite, on_delete=models.PROTECT, related_name="+")
    received_at = models.DateTimeField(auto_now_add=True)
    num_examples = models.PositiveIntegerField(default=0)
    local_steps = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    path = models.CharField(max_length=1000, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "datasite"], name="one_update_per_site")]

    def __str__(self) -> str:
        return f"update of {self.datasite_id} for round {self.round_id}"


# --- secure aggregation: session models live in their own module (registered here) ---
from orchestrator.secure_models import SecureMessage, SecureSession, StudyKey  # noqa: E402, F401
