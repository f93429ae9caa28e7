from django.apps import AppConfig


class ComplianceConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "compliance"

    def ready(self) -> None:
        from django.core import checks

        from compliance import signals
        from compliance.audit import check_sqlite_transaction_mode

        signals.connect()
        checks.register(check_sqlite_transaction_mode)
