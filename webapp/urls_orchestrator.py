"""URLs of an orchestrator node."""

from django.urls import include, path

from orchestrator.api import routers
from orchestrator.secure_api import routers as secure_routers
from webapp.api import build_api
from webapp.urls_common import common_patterns

api = build_api("orchestrator", [*routers, *secure_routers])  # secure aggregation phases
urlpatterns = [*common_patterns, path("api/", api.urls), path("", include("orchestrator.urls"))]
