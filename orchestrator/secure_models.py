"""Orchestrator state of secure-aggregation sessions (imported by :mod:`orchestrator.models`).

A session is one secure sum (``secagg`` or ``he`` mode): a training round's updates
(``number`` = the round) or the study's normalization statistics (``number`` = 0). Its public
messages (key adverts, encrypted shares, masked-input headers, unmask responses, he commits)
are rows of :class:`SecureMessage`; the running sum of masked inputs (secagg) and the
encrypted chunks (he) are files next to the study's checkpoints (see
:mod:`orchestrator.secure.sessions` and :mod:`orchestrator.secure.he_files`). Nothing here is a
site's plaintext. :class:`StudyKey` records the he key ceremony.
"""

from django.db import models


class SecureSession(models.Model):
    class Kind(models.TextChoices):
        UPDATE = "update"
        STATS = "stats"

    class Phase(models.TextChoices):
        ADVERTISE = "advertise"
        SHARE = "share"
        MASK = "mask"
        UNMASK = "unmask"
        UPLOAD = "upload"  # he mode: sites upload encrypted chunks and commit
        DECRYPT = "decrypt"  # he mode: a key-holding site decrypts the aggregate
        DONE = "done"
        FAILED = "failed"

    study = models.ForeignKey("orchestrator.Study", on_delete=models.CASCADE, related_name="secure_sessions")
    number = models.PositiveIntegerField(help_text="round number; 0 for the statistics")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    mode = models.CharField(max_length=8, default="secagg")
    session_id = models.CharField(max_length=200, unique=True, help_text="the protocol's round id")
    params = models.JSONField(help_text="SecAggParams, signed into every key advert")
    layout = models.JSONField(help_text="names and shapes of the summed vector")
    phase = models.CharField(max_length=10, choices=Phase.choices, default=Phase.ADVERTISE)
    phase_deadline = models.DateTimeField()
    advertised = models.JSONField(default=list, blank=True, help_text="U1")
    shared = models.JSONField(default=list, blank=True, help_text="U2")
    survivors = models.JSONField(default=list, blank=True, help_text="U3: masked inputs in the sum")
    dropped = models.JSONField(default=list, blank=True, help_text="U2 minus U3")
    decryptors = models.JSONField(
        default=list, blank=True, help_text="he mode: the sites asked to decrypt, in order"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["study", "number"]
        constraints = [models.UniqueConstraint(fields=["study", "number"], name="one_secure_session")]

    def __str__(self) -> str:
        return f"{self.kind} session {self.session_id} ({self.phase})"


class SecureMessage(models.Model):
    """One site's message of one phase (public material only: keys, ciphertexts, shares)."""

    class Phase(models.TextChoices):
        ADVERT = "advert"
        SHARES = "shares"
        MASKED = "masked"
        UNMASK = "unmask"
        COMMIT = "commit"  # he mode: every chunk uploaded

    session = models.ForeignKey(SecureSession, on_delete=models.CASCADE, related_name="messages")
    phase = models.CharField(max_length=8, choices=Phase.choices)
    site = models.CharField(max_length=63)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["session", "phase", "site"]
        constraints = [
            models.UniqueConstraint(fields=["session", "phase", "site"], name="one_message_per_phase")
        ]

    def __str__(self) -> str:
        return f"{self.phase} of {self.site} in {self.session_id}"


class StudyKey(models.Model):
    """The ``he`` key ceremony of a study: who made the CKKS key and who has received it.

    ``envelopes`` holds the sealed copies (site → base64 envelope, unreadable here) until each
    is delivered; then it is emptied. The orchestrator never holds the secret key itself.
    """

    study = models.OneToOneField("orchestrator.Study", on_delete=models.CASCADE, related_name="he_key")
    key_holder = models.CharField(max_length=63)
    key_id = models.CharField(max_length=32)
    envelopes = models.JSONField(default=dict, blank=True)
    delivered = models.JSONField(default=list, blank=True)
    done = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"CKKS key {self.key_id[:8]} of study {self.study_id} (holder {self.key_holder})"
