"""What the secure modes (``secagg``, ``he``) share at a datasite: taking part in one session
against the orchestrator's ``/api/secure/studies/<study>/rounds/<n>`` endpoints.

A site's part in a session runs once per process (:func:`contribute_securely`); a site that
cannot go on raises :class:`SecureAbort` and becomes a dropout, which the others' sum
survives. Polls and sends retry while the orchestrator is unreachable, within the round's
deadline (:func:`deadline`: the plan's round timeout plus three phases,
``settings.FEDSILO_SECAGG_PHASE_SECONDS``); a refusal aborts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone

from audit import trail
from common.protocol import Plan
from datasite.models import RoundRun
from datasite.orchestrator_client import OrchestratorClient, OrchestratorError
from datasite.results import public_metrics

log = logging.getLogger(__name__)
UNSHARED_METRICS = ("frames_used", "episodes_used")  # the weight is inside the secure sum

_active: set[tuple[str, int]] = set()
_active_lock = threading.Lock()


class SecureAbort(Exception):
    """This site stops taking part in the session (it becomes a dropout); the message says why."""


def session_client(study: str, number: int) -> OrchestratorClient:
    """A client of round ``number``'s session (0: the statistics) at the orchestrator."""
    return OrchestratorClient.joined(
        f"/api/secure/studies/{study}/rounds/{number}", pause=settings.FEDSILO_SECAGG_POLL_SECONDS
    )


def deadline(plan: Plan) -> float:
    """When this site gives up on a session (``time.monotonic()``)."""
    return time.monotonic() + plan.round_timeout_s + 3 * settings.FEDSILO_SECAGG_PHASE_SECONDS


def shared_metrics(run: RoundRun) -> dict:
    """The public metrics a secure round releases: no example counts (they are in the sum)."""
    return {k: v for k, v in public_metrics(run.metrics).items() if k not in UNSHARED_METRICS}


def wait_for(api: OrchestratorClient, path: str, key: str, until: float) -> object:
    """Poll GET ``path`` until its ``key`` is set; abort on a refusal or at ``until``."""
    while time.monotonic() < until:
        try:
            value = api.get(path, until=until).json().get(key)
        except OrchestratorError as exc:
            if exc.refused:
                raise SecureAbort(str(exc)) from exc
            break
        if value is not None:
            return value
        time.sleep(api.pause)
    raise SecureAbort(f"gave up waiting for {path}")


def send(api: OrchestratorClient, path: str, until: float, **kwargs) -> None:
    """POST, retrying while the orchestrator is unreachable (a repeat is safe: see
    :mod:`datasite.orchestrator_client`); a refusal aborts."""
    try:
        api.post(path, until=until, **kwargs)
    except OrchestratorError as exc:
        raise SecureAbort(str(exc) if exc.refused else f"gave up sending {path}") from exc


def enter(key: tuple[str, int]) -> bool:
    """Claim session ``key`` (study, round) in this process; False when it is running already."""
    with _active_lock:
        if key in _active:
            return False
        _active.add(key)
        return True


def leave(key: tuple[str, int]) -> None:
    with _active_lock:
        _active.discard(key)


def contribute_securely(run: RoundRun, take_part: Callable[[RoundRun], dict]) -> bool:
    """Run this site's part in a secure round once per process and audit how it ended.

    ``take_part`` returns what to record of its contribution, or raises ``SecureAbort``:
    the site drops out of the round (the others' sum still completes). False when it
    dropped out or another delivery of the round is running in this process."""
    key = (run.study, run.round)
    if not enter(key):
        log.info("secure round %s/%s already running in this process", *key)
        return False
    try:
        outcome = take_part(run)
    except SecureAbort as exc:
        log.warning("secure round %s/%s: this site drops out: %s", *key, exc)
        trail.record(
            "round.secure_aborted",
            trail.SYSTEM,
            f"study:{run.study}",
            {"round": run.round, "reason": str(exc)[:500]},
        )
        return False
    finally:
        leave(key)
    RoundRun.objects.filter(pk=run.pk).update(uploaded_at=timezone.now())
    trail.record(
        "round.secure_contributed", trail.SYSTEM, f"study:{run.study}", {"round": run.round, **outcome}
    )
    return True
