"""URLs for this node's role: shared pages plus the role's app."""

from importlib import import_module

from django.conf import settings

urlpatterns = import_module(f"webapp.urls_{settings.ROLE}").urlpatterns
