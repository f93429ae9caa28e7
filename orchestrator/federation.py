"""Federation membership at the orchestrator: invitations, joins, heartbeats."""

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from audit import trail
from common.models import ApiToken
from common.protocol import JoinRequest
from common.roles import PEER_NODE
from common.signing import verify
from orchestrator.models import Datasite


class FederationError(Exception):
    """A join or heartbeat that must be refused; the message says why."""


def peer_username(site_name: str) -> str:
    return f"node.{site_name}"


@transaction.atomic
def invite_datasite(name: str, lifetime: timedelta = timedelta(days=7)) -> tuple[Datasite, str]:
    """Create the site's peer account and return a join token for it (shown once)."""
    if Datasite.objects.filter(name=name).exists():
        raise FederationError(f"datasite {name!r} is already invited or joined")
    user = get_user_model().objects.create_user(username=peer_username(name))
    user.set_unusable_password()
    user.save()
    user.groups.add(Group.objects.get(name=PEER_NODE))
    site = Datasite.objects.create(name=name, account=user)
    token, raw = ApiToken.issue(user, f"join:{name}", lifetime)
    trail.record("federation.invited", None, f"datasite:{name}", {"token": token.key})
    return site, raw


@transaction.atomic
def accept_join(user, request: JoinRequest) -> Datasite:
    """Register a datasite's URL and keys; the signature proves it holds its signing key."""
    site = Datasite.objects.select_for_update().filter(account=user).first()
    if site is None:
        raise FederationError("this token was not issued to invite a datasite")
    if site.name != request.node.name:
        raise FederationError(
            f"this token invites {site.name!r}, not {request.node.name!r}: "
            "join with the node name the orchestrator admin invited"
        )
    if request.node.role != "datasite":
        raise FederationError("only datasites join an orchestrator")
    payload = request.model_dump(exclude={"signature"})
    if not verify(request.node.signing_key, payload, request.signature):
        raise FederationError("the join request's signature does not match its signing key")
    if site.status == Datasite.Status.JOINED and site.signing_key != request.node.signing_key:
        raise FederationError("this datasite already joined with other keys; ask for a new invite")
    site.url = request.node.url
    site.signing_key = request.node.signing_key
    site.kex_key = request.node.kex_key
    site.callback_token = request.callback_token
    site.status = Datasite.Status.JOINED
    site.joined_at = site.joined_at or timezone.now()
    site.last_heartbeat = timezone.now()
    site.save()
    trail.record(
        "federation.joined",
        f"node:{site.name}",
        f"datasite:{site.name}",
        {"url": site.url, "signing_key": site.signing_key, "kex_key": site.kex_key},
    )
    return site


def record_heartbeat(user, name: str, status: dict) -> Datasite:
    site = Datasite.objects.filter(account=user, status=Datasite.Status.JOINED).first()
    if site is None or site.name != name:
        raise FederationError("heartbeat from a datasite that has not joined under this name")
    Datasite.objects.filter(pk=site.pk).update(last_heartbeat=timezone.now(), last_status=status)
    site.refresh_from_db()
    return site
