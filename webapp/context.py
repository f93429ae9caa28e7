"""Template context shared by every page."""

from django.conf import settings
from django.http import HttpRequest

from common.roles import PERSON_ROLES


def node(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    roles = (
        set(user.groups.filter(name__in=PERSON_ROLES).values_list("name", flat=True))
        if user is not None and user.is_authenticated
        else set()
    )
    return {"node_role": settings.ROLE, "node_name": settings.NODE_NAME, "user_roles": roles}
