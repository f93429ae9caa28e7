"""The node's REST API (django-ninja, OpenAPI at /api/openapi.json), built per role."""

from django.http import HttpRequest
from ninja import NinjaAPI, Router
from ninja.errors import ValidationError

from audit.api import router as audit_router
from common.api import TokenAuth, this_node
from common.errors import ServiceError
from common.roles import ALL_ROLES

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

    @api.exception_handler(ServiceError)
    def refused(request: HttpRequest, exc: ServiceError):
        """A service's refusal: its HTTP status and its reason."""
        return api.create_response(request, {"detail": str(exc)}, status=exc.status)

    api.add_router("", node_router)
    api.add_router("/audit", audit_router)  # peers' audit heads, on every role
    for prefix, router in routers:
        api.add_router(prefix, router)
    return api
