from django.apps import AppConfig


class WebappConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "webapp"
    verbose_name = "fedsilo node"

    def ready(self) -> None:
        from webapp import celery  # noqa: F401  (binds shared tasks to the node's app)
