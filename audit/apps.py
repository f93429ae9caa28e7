from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The tamper-evident audit log: one write function (:func:`audit.trail.record`)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "audit"
    verbose_name = "fedsilo audit log"

    def ready(self) -> None:
        from django.core import checks

        from audit import signals
        from audit.trail import check_signing_key_outside, check_sqlite_transaction_mode

        signals.connect()
        checks.register(check_sqlite_transaction_mode)
        checks.register(check_signing_key_outside)
