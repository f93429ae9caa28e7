"""URLs of a datasite node."""

from django.urls import path

from webapp.api import build_api
from webapp.urls_common import common_patterns

api = build_api("datasite", [])
urlpatterns = [*common_patterns, path("api/", api.urls)]
