"""What every role's REST API shares: token authentication, role checks, this node's description.

The API itself is assembled per role by :func:`webapp.api.build_api`, which also answers every
:class:`common.errors.ServiceError` a view lets through with its HTTP status: views call
services and need no error adapter of their own.
"""

from django.conf import settings
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security.base import AuthBase

from common.node import load_node
from common.protocol import NodeInfo
from common.roles import has_role


class TokenAuth(AuthBase):
    """Accept only requests authenticated by an API token (never a session cookie).

    ``webapp.auth.TokenAuthenticationMiddleware`` has already checked the token.
    """

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __call__(self, request: HttpRequest):
        return request.user if getattr(request, "api_token", None) else None


def require_role(request: HttpRequest, *roles: str) -> None:
    """Raise 403 unless the caller holds one of ``roles``."""
    if not has_role(request.user, *roles):
        raise HttpError(403, f"this endpoint needs the role {' or '.join(roles)}")


def this_node() -> NodeInfo:
    """This node's public description (needs a node folder)."""
    node = load_node(settings.NODE_DIR, settings.FEDSILO_SIGNING_KEY_FILE)
    if node is None:
        raise HttpError(503, "this process runs without a node folder (set FEDSILO_NODE_DIR)")
    return NodeInfo(name=node.name, role=node.role, url=node.public_url, **node.public_keys())
