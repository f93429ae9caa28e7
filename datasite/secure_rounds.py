"""Secure aggregation (``secagg`` mode) at a datasite: take part in a session, phase by phase.

The round task (Celery worker or the embedded thread) trains as in plain mode; then, instead
of uploading ``update.safetensors``, :func:`upload_secure` runs the four SecAgg+ phases
against the orchestrator (:mod:`orchestrator.secure_api`) in the same call, keeping its
:class:`~privacy.secagg.SecAggClient` (and so its fresh secret keys and shares) on its own
stack: advertise keys, poll for the adverts, send encrypted shares, poll for the shares
addressed to it, send the masked input (its pre-weighted update, see
:class:`privacy.secure_vector.UpdateEncoding`), poll for the unmask request, answer it with
its public metrics. State lives in one process and dies with it: a site that crashes
mid-round is a dropout and the others' sum still completes (up to n − t dropouts after key
sharing). A second delivery of the same round finds the first still running (same process:
it returns at once) or sees from the orchestrator that this site already took part and stops.

Normalization statistics go through the same path (:func:`start_stats`, round 0): the
site's moments (:func:`privacy.normstats.to_moments`) as exact fixed-point limbs.

Trust: the peers' long-term signing keys come from the approved code request
(``CodeRequest.site_keys``), which the orchestrator relayed when it sent the request and
the data owner approved with it; the keys the orchestrator shows at round time must equal
them. The session's parameters are checked against the approved plan (clip, threshold,
strategy, weights bound, steps), its sites against the approved participant list, and its
layout against this site's own update, so the orchestrator cannot change what is summed.
"""

from __future__ import annotations

import base64
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from audit import trail
from common.node import load_node
from common.protocol import CodeRequestIn
from datasite import services
from datasite.models import CodeRequest, RoundRun
from privacy.normstats import to_moments
from privacy.secagg import (
    EncryptedShare,
    KeyAdvert,
    SecAggClient,
    SecAggError,
    SecAggParams,
    UnmaskRequest,
)
from privacy.secure_vector import (
    LIMBS,
    EncodingError,
    UpdateEncoding,
    encode_moments,
    layout_from,
    layout_size,
    layout_to_json,
)

log = logging.getLogger(__name__)
SECURE_MODES = ("secagg", "he")  # he studies pool their statistics through secagg too
POLL_SECONDS = float(os.environ.get("FEDSILO_SECAGG_POLL_SECONDS", "0.5"))
PHASE_SECONDS = float(os.environ.get("FEDSILO_SECAGG_PHASE_SECONDS", "120"))
# test-only fault injection: "after-shares@<round>" kills this process right after it sent its
# shares in that round (round 0: the statistics), so that the others must recover its masks
FAULT_ENV = "FEDSILO_FAULT_SECAGG_EXIT"
_UNSHARED_METRICS = ("frames_used", "episodes_used")  # the weight is inside the secure sum

_active: set[tuple[str, int]] = set()
_active_lock = threading.Lock()
_stats_started: dict[str, list] = {}
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedsilo-secure")


class SecureAbort(Exception):
    """This site stops taking part in the session (it becomes a dropout); the message says why."""


def is_secure(plan) -> bool:
    return plan.aggregation in SECURE_MODES


# ----------------------------------------------------------------------------- hooks


def check_code_request(body: CodeRequestIn) -> None:
    """Relayed signing keys must be well-formed keys of the study's sites.

    A secure study whose request lacks a site's key can still be reviewed, but this site
    will refuse every secure session that includes that site (see ``_verified_params``)."""
    strangers = sorted(set(body.site_keys) - set(body.sites))
    if strangers:
        raise services.ServiceError(f"signing keys relayed for sites outside the study: {strangers}")
    for name, key in body.site_keys.items():
        try:
            raw = base64.b64decode(key, validate=True)
        except ValueError as exc:
            raise services.ServiceError(f"signing key of {name!r} is not base64") from exc
        if len(raw) != 32:
            raise services.ServiceError(f"signing key of {name!r} is not a 32-byte Ed25519 key")


def refuse_plain_stats(study: str) -> None:
    """In a secure study this site's statistics leave only through the secure sum."""
    request = services.latest_request(study)
    if is_secure(services.plan_of(request)):
        raise services.Forbidden("this study aggregates securely: statistics go through the secure sum only")


def handles(run: RoundRun) -> bool:
    return not run.eval_only and is_secure(services.plan_of(run.request))


# ----------------------------------------------------------------------------- orchestrator calls


class OrchestratorCalls:
    def __init__(self, study: str, number: int):
        link = services._orchestrator()
        self.http = httpx.Client(
            base_url=f"{link.url}/api/secure/studies/{study}/rounds/{number}",
            headers={"Authorization": f"Bearer {link.token}"},
            timeout=300,
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs) -> httpx.Response | None:
        """The response, or None when the orchestrator is unreachable (retry later)."""
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            log.info("secure aggregation: %s %s failed: %s", method, path, exc)
            return None


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text[:300]


def wait_for(api: OrchestratorCalls, path: str, key: str, until: float) -> object:
    """Poll GET ``path`` until its ``key`` is set; abort on a refusal or at ``until``."""
    while time.monotonic() < until:
        response = api.request("GET", path)
        if response is not None:
            if response.status_code == 200:
                value = response.json().get(key)
                if value is not None:
                    return value
            elif response.status_code < 500:
                raise SecureAbort(f"GET {path}: HTTP {response.status_code}: {_detail(response)}")
        time.sleep(POLL_SECONDS)
    raise SecureAbort(f"gave up waiting for {path}")


def send(api: OrchestratorCalls, path: str, until: float, **kwargs) -> None:
    """POST, retrying while the orchestrator is unreachable; a refusal aborts.

    A retry answered "already sent/answered" (409) means an earlier attempt arrived and only
    its answer was lost (a connection closed mid-reply), so the message counts as delivered.
    """
    retried = False
    while time.monotonic() < until:
        response = api.request("POST", path, **kwargs)
        if response is not None:
            if response.status_code in (200, 201):
                return
            detail = _detail(response)
            if retried and response.status_code == 409 and " already " in detail:
                log.info("secure aggregation: POST %s had arrived before: %s", path, detail)
                return
            if response.status_code < 500:
                raise SecureAbort(f"POST {path}: HTTP {response.status_code}: {detail}")
        retried = True
        time.sleep(POLL_SECONDS)
    raise SecureAbort(f"gave up sending {path}")


# ----------------------------------------------------------------------------- one session


def _verified_params(setup: dict, request: CodeRequest, study: str, number: int) -> SecAggParams:
    """The session's parameters, refused unless they match what the data owner approved."""
    plan = services.plan_of(request)
    expected_id = f"fedsilo/{study}/" + ("stats" if number == 0 else f"round-{number}")
    if setup.get("session_id") != expected_id or setup.get("mode") != "secagg":
        raise SecureAbort(f"unexpected session {setup.get('session_id')!r} ({setup.get('mode')!r})")
    try:
        params = SecAggParams.from_dict(setup["params"])
    except (SecAggError, KeyError, TypeError) as exc:
        raise SecureAbort(f"invalid session parameters: {exc}") from exc
    me = settings.NODE_NAME
    if me not in params.sites:
        raise SecureAbort("this site is not among the session's sites")
    strangers = sorted(set(params.sites) - set(request.sites))
    if strangers:
        raise SecureAbort(f"the session names sites outside the approved study: {strangers}")
    if params.neighbours is not None:
        raise SecureAbort("only the complete graph was approved")
    if plan.secure.threshold is not None and params.threshold < plan.secure.threshold:
        raise SecureAbort(f"threshold {params.threshold} is below the approved {plan.secure.threshold}")
    pinned = request.site_keys or {}
    relayed = setup.get("site_keys") or {}
    for name in params.sites:
        if name not in pinned:
            raise SecureAbort(f"no approved signing key for {name!r}")
        if relayed.get(name) not in (None, pinned[name]):
            raise SecureAbort(f"the orchestrator now shows another signing key for {name!r}")
    return params


def _participate(
    study: str,
    number: int,
    request: CodeRequest,
    vector_for: Callable[[dict, SecAggParams], np.ndarray],
    metrics: dict | None,
    budget_s: float,
) -> dict:
    """Run the four phases; return the unmask request (who is in the sum). Raises SecureAbort."""
    until = time.monotonic() + budget_s
    api = OrchestratorCalls(study, number)
    try:
        setup = wait_for(api, "/setup", "setup", until)
        if any(setup.get("progress", {}).values()):
            raise SecureAbort("this site already took part in this session (an earlier attempt)")
        params = _verified_params(setup, request, study, number)
        vector = vector_for(setup, params)  # checked against this site's own data before any key is made
        node = load_node(settings.NODE_DIR)
        if node is None:
            raise SecureAbort("secure aggregation needs the node folder's signing key")
        peers = {n: base64.b64decode(k) for n, k in request.site_keys.items() if n in params.sites}
        client = SecAggClient(settings.NODE_NAME, setup["session_id"], node.signing_key(), peers, params)

        send(api, "/advert", until, json=client.advertise_keys().to_dict())
        adverts = [KeyAdvert.from_dict(d) for d in wait_for(api, "/adverts", "adverts", until)]
        shares = client.share_keys(adverts)
        send(api, "/shares", until, json={"shares": [m.to_dict() for m in shares]})
        if os.environ.get(FAULT_ENV) == f"after-shares@{number}":
            log.warning("fault injection (%s): this process dies after sharing keys", FAULT_ENV)
            os.kill(os.getpid(), signal.SIGKILL)
        routed = [EncryptedShare.from_dict(d) for d in wait_for(api, "/shares", "shares", until)]
        masked = client.masked_input(vector, routed)
        del vector
        send(
            api,
            "/masked",
            until,
            content=masked.to_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        del masked
        unmask = UnmaskRequest.from_dict(wait_for(api, "/unmask", "request", until))
        response = client.unmask(unmask.survivors, unmask.dropped)
        send(api, "/unmask", until, json={"response": response.to_dict(), "metrics": metrics or {}})
        return {"survivors": list(unmask.survivors), "dropped": list(unmask.dropped)}
    except (SecAggError, EncodingError, ValueError, KeyError, TypeError) as exc:
        raise SecureAbort(f"{exc.__class__.__name__}: {exc}") from exc
    finally:
        api.close()


def enter(key: tuple[str, int]) -> bool:
    with _active_lock:
        if key in _active:
            return False
        _active.add(key)
        return True


def leave(key: tuple[str, int]) -> None:
    with _active_lock:
        _active.discard(key)


# ----------------------------------------------------------------------------- training rounds


def upload_secure(run: RoundRun) -> bool:
    """Contribute a finished round's update to the secure sum (the hook in ``upload_result``)."""
    if services.plan_of(run.request).aggregation == "he":
        from datasite import he_rounds

        return contribute(run, he_rounds.upload)
    return contribute(run, _upload_secagg)


def contribute(run: RoundRun, take_part: Callable[[RoundRun], dict]) -> bool:
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


def _upload_secagg(run: RoundRun) -> dict:
    from safetensors.numpy import load

    request = run.request
    plan = services.plan_of(request)
    update = load((services.round_dir(run.study, run.round) / "update.safetensors").read_bytes())
    enc = UpdateEncoding(
        layout_from(update), plan.strategy, plan.secure.clip, plan.secure.max_weight, plan.local_steps
    )
    clipped = []

    def vector_for(setup: dict, params: SecAggParams) -> np.ndarray:
        layout = setup.get("layout", {})
        if layout.get("manifest") != layout_to_json(enc.layout) or params.vector_length != enc.length:
            raise SecureAbort("the session's layout differs from this site's update")
        if params.clip != enc.clip:
            raise SecureAbort(f"the session's clip {params.clip} differs from the approved {enc.clip}")
        floats, n_clipped = enc.encode(update, run.num_examples, plan.local_steps)
        clipped.append(n_clipped)
        return params.quantize(floats)

    metrics = {k: v for k, v in services._public_metrics(run.metrics).items() if k not in _UNSHARED_METRICS}
    budget = plan.round_timeout_s + 3 * PHASE_SECONDS
    outcome = _participate(run.study, run.round, request, vector_for, metrics, budget)
    return {**outcome, "clipped_values": sum(clipped)}


# ----------------------------------------------------------------------------- statistics


def start_stats(study: str) -> dict:
    """Compute this site's statistics moments and start its statistics session in the background.

    Answers the orchestrator with the moments' layout (names and shapes, no values); a repeated
    call answers the same layout and starts nothing new."""
    request = services.approved_request(study)
    if not is_secure(services.plan_of(request)):
        raise services.Forbidden("this study does not aggregate securely")
    with _active_lock:
        if study in _stats_started:
            return {"layout": _stats_started[study]}
    stats = services.study_stats(study)
    moments = to_moments({k: {n: np.asarray(v) for n, v in by.items()} for k, by in stats.items()})
    layout = layout_from(moments)
    with _active_lock:
        if study in _stats_started:
            return {"layout": _stats_started[study]}
        _stats_started[study] = layout_to_json(layout)
    _pool.submit(_run_stats, study, request.pk, moments, layout)
    return {"layout": layout_to_json(layout)}


def _run_stats(study: str, request_id: int, moments: dict, layout) -> None:
    key = (study, 0)
    if not enter(key):
        return
    try:
        request = CodeRequest.objects.get(pk=request_id)

        def vector_for(setup: dict, params: SecAggParams) -> np.ndarray:
            if setup.get("layout", {}).get("moments") != layout_to_json(layout):
                raise SecureAbort("the session's statistics layout differs from this site's")
            if params.vector_length != LIMBS * layout_size(layout):
                raise SecureAbort("the session's vector length does not match the statistics")
            return encode_moments(moments, layout)

        budget = services.plan_of(request).round_timeout_s + 3 * PHASE_SECONDS
        outcome = _participate(study, 0, request, vector_for, None, budget)
        trail.record("statistics.secure_contributed", trail.SYSTEM, f"study:{study}", outcome)
    except SecureAbort as exc:
        log.warning("secure statistics of %s: this site drops out: %s", study, exc)
        trail.record("statistics.secure_aborted", trail.SYSTEM, f"study:{study}", {"reason": str(exc)[:500]})
    except Exception:
        log.exception("secure statistics of %s crashed", study)
    finally:
        leave(key)
        close_old_connections()
