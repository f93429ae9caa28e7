from django.apps import AppConfig


class CommonConfig(AppConfig):
    """What every app shares: wire protocol, roles, errors, signing, node config, API tokens."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "common"
    verbose_name = "fedsilo common"
