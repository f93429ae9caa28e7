"""Every endpoint requires authentication except health and login (walks the URLconf)."""

import importlib
import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver

PUBLIC = {"health", "accounts/login/", "admin/login/"}


def walk(patterns, prefix=""):
    for p in patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from walk(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route, p


def concrete(route: str) -> str:
    """A URL for a route pattern, with placeholder values for its parameters."""
    route = route.lstrip("^").rstrip("$").replace("\\Z", "").replace("\\", "")
    route = re.sub(r"<(?:int:)?(\w+)>", "1", route)
    route = re.sub(r"<\w+:(\w+)>", "x", route)
    route = re.sub(r"\(\?P<\w+>[^)]*\)", "1", route)
    return "/" + route


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["datasite", "orchestrator"])
def test_every_non_public_view_refuses_anonymous(role, settings):
    urls = importlib.import_module(f"webapp.urls_{role}")
    settings.ROOT_URLCONF = urls
    client = Client()
    checked = 0
    for route, _ in walk(urls.urlpatterns):
        url = concrete(route)
        if route.lstrip("^") in PUBLIC:
            continue
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code in (301, 302, 401, 403, 404, 405), (url, method)
            if response.status_code in (301, 302):
                assert "/login" in response["Location"], (url, response["Location"])
            if response.status_code == 404:
                # only admin's catch-all may 404, and only after login is checked
                assert url.startswith("/admin/"), url
            checked += 1
    assert checked > 20


@pytest.mark.django_db
def test_public_views_answer_anonymous(client):
    assert client.get("/health").status_code == 200
    assert client.get("/accounts/login/").status_code == 200


@pytest.mark.django_db
def test_api_answers_401_json_not_a_redirect(client):
    response = client.get("/api/node")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in response.json()["detail"]
