"""Authentication middleware: bearer tokens for APIs, sessions for pages, nothing anonymous.

Every view requires an authenticated user unless it is marked with Django's
``login_not_required`` (health, login). API paths answer 401 JSON instead of redirecting.
"""

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.http import HttpRequest, HttpResponse, JsonResponse

from common.models import ApiToken

API_PREFIX = "/api/"


def _unauthorized(detail: str) -> JsonResponse:
    response = JsonResponse({"detail": detail}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="fedsilo"'
    return response


class TokenAuthenticationMiddleware:
    """Authenticate ``Authorization: Bearer <token>`` requests; reject bad tokens outright."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.api_token = None
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, raw = header.partition(" ")
            if scheme.lower() != "bearer" or not raw.strip():
                return _unauthorized("use 'Authorization: Bearer <token>'")
            token = ApiToken.authenticate(raw.strip())
            if token is None:
                return _unauthorized("invalid, expired or revoked token: ask the node admin for a new one")
            request.user = token.user
            request.api_token = token
            request._dont_enforce_csrf_checks = True  # no cookies involved
        return self.get_response(request)


class AuthenticationRequiredMiddleware(LoginRequiredMiddleware):
    """Django's login-required default for every view; JSON 401 on API paths."""

    def handle_no_permission(self, request, view_func):
        if request.path.startswith(API_PREFIX):
            return _unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        return super().handle_no_permission(request, view_func)
