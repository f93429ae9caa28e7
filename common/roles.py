"""Roles are Django groups; each person or peer node holds the roles it needs and no more."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

DATA_OWNER = "data_owner"
RESEARCHER = "researcher"
COMPLIANCE_OFFICER = "compliance_officer"
NODE_ADMIN = "node_admin"
PEER_NODE = "peer_node"

PERSON_ROLES = (DATA_OWNER, RESEARCHER, COMPLIANCE_OFFICER, NODE_ADMIN)
ALL_ROLES = (*PERSON_ROLES, PEER_NODE)


def has_role(user: Any, *roles: str) -> bool:
    """True when an authenticated, active user is in one of the groups ``roles``."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.groups.filter(name__in=roles).exists()


def role_required(*roles: str) -> Callable:
    """View decorator: 403 unless the user holds one of ``roles``."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if not has_role(request.user, *roles):
                raise PermissionDenied(f"this page needs the role {' or '.join(roles)}")
            return view(request, *args, **kwargs)

        wrapper.required_roles = roles  # type: ignore[attr-defined]
        return wrapper

    return decorator
