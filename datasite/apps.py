from django.apps import AppConfig


class DatasiteConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "datasite"

    def ready(self) -> None:
        from audit import peers
        from compliance import providers
        from datasite.orchestrator_client import ORCHESTRATOR_PEERS
        from datasite.reports import DatasiteReport

        providers.register("datasite", DatasiteReport)
        peers.register(ORCHESTRATOR_PEERS)
