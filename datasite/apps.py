from django.apps import AppConfig


class DatasiteConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "datasite"

    def ready(self) -> None:
        from compliance import providers
        from datasite.reports import DatasiteReport

        providers.register("datasite", DatasiteReport)
