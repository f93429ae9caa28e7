from django.apps import AppConfig


class DatasiteConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "datasite"
