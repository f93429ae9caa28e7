from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "orchestrator"

    def ready(self) -> None:
        from audit import peers
        from compliance import providers
        from orchestrator.reports import OrchestratorReport
        from orchestrator.sites import SITE_PEERS

        providers.register("orchestrator", OrchestratorReport)
        peers.register(SITE_PEERS)
