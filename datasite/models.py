"""Datasite state: its orchestrator, datasets, contributors' consent, code requests, rounds,
and the privacy budget ledger."""

from django.conf import settings
from django.db import models
from django.db.models import Q


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


class Dataset(models.Model):
    """A registered LeRobot SO-100 dataset with one privacy budget (ε_max, δ) across studies."""

    name = models.SlugField(max_length=63, unique=True)
    root = models.CharField(max_length=1000)
    repo_id = models.CharField(max_length=200)
    summary = models.JSONField(help_text="validated schema, counts, contributors, stats (private)")
    mock = models.JSONField(help_text="synthetic preview that other parties may see")
    num_episodes = models.PositiveIntegerField()
    num_frames = models.PositiveIntegerField()
    epsilon_max = models.FloatField()
    delta = models.FloatField()
    registered_at = models.DateTimeField(auto_now_add=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def contributors(self) -> dict[int, str]:
        """episode_index → contributor pseudonym."""
        return {int(k): v for k, v in self.summary["contributors"].items()}


class ConsentEvent(models.Model):
    """A contributor gave or withdrew consent for a purpose. The latest event wins."""

    contributor = models.CharField(max_length=100, db_index=True)
    purpose = models.CharField(max_length=63)
    given = models.BooleanField()
    at = models.DateTimeField(auto_now_add=True)
    evidence = models.CharField(max_length=500, blank=True)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.contributor} {'gave' if self.given else 'withdrew'} {self.purpose}"


class CodeRequest(models.Model):
    """A study's code and plan as sent by the orchestrator, and the data owner's decision."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        REVOKED = "revoked"
        SUPERSEDED = "superseded"

    study = models.CharField(max_length=32, db_index=True)
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=200)
    researcher = models.CharField(max_length=150)
    code = models.JSONField()
    code_sha256 = models.CharField(max_length=64)
    plan = models.JSONField()
    plan_sha256 = models.CharField(max_length=64)
    datasets = models.ManyToManyField(Dataset, related_name="code_requests")
    sites = models.JSONField(default=list)
    site_keys = models.JSONField(
        default=dict, blank=True, help_text="site → Ed25519 key relayed with the request (secure aggregation)"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [models.UniqueConstraint(fields=["study", "version"], name="one_request_per_version")]

    def __str__(self) -> str:
        return f"{self.title} (study {self.study[:8]} v{self.version}, {self.status})"


class RoundRun(models.Model):
    """One round of one study at this site: idempotent by (study, round)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    request = models.ForeignKey(CodeRequest, on_delete=models.PROTECT, related_name="rounds")
    study = models.CharField(max_length=32)
    round = models.PositiveIntegerField()
    eval_only = models.BooleanField(default=False)
    assignment = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=dict, blank=True)
    episodes_read = models.JSONField(default=dict, blank=True, help_text="dataset → episode indices")
    num_examples = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    lease_until = models.DateTimeField(null=True, blank=True, help_text="a worker runs it until then")
    uploaded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "round"]
        constraints = [models.UniqueConstraint(fields=["study", "round"], name="one_run_per_round")]

    def __str__(self) -> str:
        return f"study {self.study[:8]} round {self.round} ({self.status})"


class LedgerEntry(models.Model):
    """One line of a dataset's privacy ledger: a mechanism reserved, charged or released.

    ε is always recomputed by composing mechanisms (never by adding ε values).
    """

    class Kind(models.TextChoices):
        RESERVE = "reserve"
        CHARGE = "charge"
        RELEASE = "release"

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="ledger")
    study = models.CharField(max_length=32)
    round = models.PositiveIntegerField(null=True, blank=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    noise_multiplier = models.FloatField()
    sample_rate = models.FloatField()
    steps = models.PositiveIntegerField()
    unit = models.CharField(max_length=8)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "study", "round"], condition=Q(kind="charge"), name="charge_once"
            ),
            models.UniqueConstraint(
                fields=["dataset", "study"], condition=Q(kind="reserve"), name="reserve_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.dataset_id} study {self.study[:8]} round {self.round}"


class HEKey(models.Model):
    """This site's copy of a study's CKKS secret key (``he`` mode); the key itself is a 0600 file
    in the node's ``keys/he/`` folder, named after the study (see :mod:`datasite.modes.he_keys`)."""

    study = models.CharField(max_length=32, unique=True)
    key_id = models.CharField(max_length=32, help_text="hex of privacy.he.SecretContext.key_id")
    key_holder = models.CharField(max_length=63, help_text="the site that made the key (maybe this one)")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"CKKS key {self.key_id[:8]} of study {self.study[:8]} (made by {self.key_holder})"


class HEDecryption(models.Model):
    """An aggregate this site decrypted: at most one per round (see "Decryption leaks" in privacy.he)."""

    study = models.CharField(max_length=32)
    round = models.PositiveIntegerField()
    aggregate_sha256 = models.CharField(max_length=64)
    contributors = models.JSONField(help_text="the sites the orchestrator said the sum contains")
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "round"], name="one_decryption_per_round")]

    def __str__(self) -> str:
        return f"decryption of study {self.study[:8]} round {self.round}"
