"""URLs of an orchestrator node."""

from django.urls import include, path

from orchestrator.api import routers
from webapp.api import build_api
from webapp.urls_common import common_patterns

api = build_api("orchestrator", routers)
urlpatterns = [*common_patterns, path("api/", api.urls), path("", include("orchestrator.urls"))]
