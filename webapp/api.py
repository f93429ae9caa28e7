"""The node's REST API (django-ninja, OpenAPI at /api/openapi.json), built per role."""

from django.conf import settings
from django.http import HttpRequest
from ninja import NinjaAPI, Router
from ninja.errors import HttpError, ValidationError
from ninja.security.base import AuthBase

from webapp.node import load_node
from webapp.protocol import NodeInfo
from webapp.roles import ALL_ROLES, has_role


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
    node = load_node(settings.NODE_DIR)
    if node is None:
        raise HttpError(503, "this process runs without a node folder (set FEDSILO_NODE_DIR)")
    return NodeInfo(name=node.name, role=node.role, url=node.public_url, **node.public_keys())


node_router = Router(tags=["node"])


@node_router.get("/node", response=dict)
def node_info(request: HttpRequest) -> dict:
    """This node's name, role, URL and public keys, and the caller's roles."""
    roles = sorted(request.user.groups.filter(name__in=ALL_ROLES).values_list("name", flat=True))
    return {"node": this_node().model_dump(), "user": request.user.get_username(), "roles": roles}


def build_api(role: str, routers: list[tuple[str, Router]]) -> NinjaAPI:
    api = NinjaAPI(
        title=f"fedsilo {role} API",
        version="1",
        auth=TokenAuth(),
        urls_namespace=f"api-{role}",
        docs_url="/docs",
    )

    @api.exception_handler(ValidationError)
    def malformed(request: HttpRequest, exc: ValidationError):
        """Malformed input is a client error: 400 with what is wrong."""
        return api.create_response(request, {"detail": exc.errors}, status=400)

    api.add_router("", node_router)
    for prefix, router in routers:
        api.add_router(prefix, router)
    return api
