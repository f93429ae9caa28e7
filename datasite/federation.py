"""A datasite's side of federation membership: joining an orchestrator and heartbeats."""

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from audit import trail
from common.models import ApiToken
from common.node import load_node
from common.protocol import Heartbeat, JoinRequest, JoinResponse, NodeInfo
from common.roles import PEER_NODE
from common.signing import sign
from datasite.models import OrchestratorLink
from datasite.orchestrator_client import ORCHESTRATOR_ACCOUNT, OrchestratorClient, OrchestratorError

log = logging.getLogger(__name__)
CALLBACK_TOKEN_LIFETIME = timedelta(days=365)


class JoinError(Exception):
    """Joining failed; nothing was kept. The message says what to do."""


def join(orchestrator_url: str, token: str, timeout: float = 15.0) -> OrchestratorLink:
    """Register this datasite with an orchestrator, exchanging URLs and public keys."""
    node = load_node(settings.NODE_DIR, settings.FEDSILO_SIGNING_KEY_FILE)
    if node is None or node.role != "datasite":
        raise JoinError("join runs at a datasite: set FEDSILO_NODE_DIR to a datasite node folder")
    existing = OrchestratorLink.objects.first()
    if existing is not None:
        raise JoinError(f"this datasite already joined {existing.name} at {existing.url}")
    url = orchestrator_url.rstrip("/")
    with transaction.atomic():
        account, _ = get_user_model().objects.get_or_create(username=ORCHESTRATOR_ACCOUNT)
        account.set_unusable_password()
        account.save()
        account.groups.add(Group.objects.get(name=PEER_NODE))
        _, callback = ApiToken.issue(account, "orchestrator callback", CALLBACK_TOKEN_LIFETIME)
        info = NodeInfo(name=node.name, role=node.role, url=node.public_url, **node.public_keys())
        unsigned = {"node": info.model_dump(), "callback_token": callback}
        body = JoinRequest(**unsigned, signature=sign(node.signing_key(), unsigned))
        try:
            with OrchestratorClient(url, token, timeout=timeout) as client:
                response = client.post("/api/federation/join", json=body.model_dump())
        except OrchestratorError as exc:
            if exc.http_status is None:
                raise JoinError(
                    f"cannot reach the orchestrator at {url} ({exc.detail}): "
                    "check the URL and that the orchestrator is running"
                ) from exc
            if exc.http_status == 401:
                raise JoinError(
                    "the orchestrator refused the token (unknown, expired or revoked): "
                    "ask its admin for a new invitation (manage.py invite_datasite)"
                ) from exc
            raise JoinError(
                f"the orchestrator refused to register this site (HTTP {exc.http_status}): {exc.detail}"
            ) from exc
        peer = JoinResponse.model_validate(response.json()).orchestrator
        trail.record(
            "federation.joined",
            None,
            f"orchestrator:{peer.name}",
            {"url": url, "signing_key": peer.signing_key, "kex_key": peer.kex_key},
        )
        return OrchestratorLink.objects.create(
            name=peer.name, url=url, signing_key=peer.signing_key, kex_key=peer.kex_key, token=token
        )


def send_heartbeat(timeout: float = 5.0) -> bool:
    """Tell the orchestrator this site is alive; False when not joined or unreachable."""
    link = OrchestratorLink.objects.first()
    if link is None:
        return False
    beat = Heartbeat(name=settings.NODE_NAME, status={"role": "datasite"})
    try:
        with OrchestratorClient(link.url, link.token, timeout=timeout) as client:
            client.post("/api/federation/heartbeat", json=beat.model_dump())
    except OrchestratorError as exc:
        log.warning("heartbeat to %s failed: %s", link.url, exc)
        return False
    OrchestratorLink.objects.filter(pk=link.pk).update(last_heartbeat_ok=timezone.now())
    return True
