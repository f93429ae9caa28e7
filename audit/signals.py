"""Sign-ins, sign-outs, failed sign-ins and API-token changes become audit events (never a secret)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.http import HttpRequest

from audit import trail
from common.signals import token_issued, token_revoked


def request_info(request: HttpRequest | None) -> dict[str, str]:
    """The client address; a proxy's X-Forwarded-For is kept apart, as the client's claim."""
    if request is None:
        return {}
    info = {"ip": request.META.get("REMOTE_ADDR", "")}
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded:
        info["forwarded_for"] = forwarded[:200]
    return info


def _target(username: str) -> str:
    return f"user:{username}"[: trail.MAX_TARGET]


def on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    trail.record("auth.login", user, _target(user.get_username()), request_info(request))


def on_logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is None or not user.is_authenticated:  # logout without a session: nothing changed
        return
    trail.record("auth.logout", user, _target(user.get_username()), request_info(request))


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    field = get_user_model().USERNAME_FIELD
    username = str(credentials.get(field) or credentials.get("username") or "")[: trail.MAX_ACTOR]
    trail.record("auth.login_failed", trail.ANONYMOUS, _target(username),
                 {"username": username, **request_info(request)})


def on_token_issued(sender: Any, token: Any, **kwargs: Any) -> None:
    trail.record(
        "token.issued",
        None,
        _target(token.user.get_username()),
        {"key": token.key, "name": token.name, "expires_at": token.expires_at.isoformat()},
    )


def on_token_revoked(sender: Any, token: Any, **kwargs: Any) -> None:
    trail.record("token.revoked", None, _target(token.user.get_username()), {"key": token.key})


def connect() -> None:
    """Connect the handlers (idempotent: each has a dispatch_uid)."""
    user_logged_in.connect(on_logged_in, dispatch_uid="audit.trail.login")
    user_logged_out.connect(on_logged_out, dispatch_uid="audit.trail.logout")
    user_login_failed.connect(on_login_failed, dispatch_uid="audit.trail.login_failed")
    token_issued.connect(on_token_issued, dispatch_uid="audit.trail.token_issued")
    token_revoked.connect(on_token_revoked, dispatch_uid="audit.trail.token_revoked")
