from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "orchestrator"

    def ready(self) -> None:
        from compliance import providers
        from orchestrator.reports import OrchestratorReport

        providers.register("orchestrator", OrchestratorReport)
