"""URLs of a datasite node."""

from django.urls import include, path

from datasite.api import routers
from webapp.api import build_api
from webapp.urls_common import common_patterns

api = build_api("datasite", routers)
urlpatterns = [*common_patterns, path("api/", api.urls), path("", include("datasite.urls"))]
