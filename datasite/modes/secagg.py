"""The ``secagg`` aggregation mode at a datasite: take part in a SecAgg+ session, phase by phase.

The round task (Celery worker or the embedded thread) trains as in plain mode; then, instead
of uploading ``update.safetensors``, :meth:`SecAggMode.contribute` runs the four SecAgg+
phases against the orchestrator (:mod:`orchestrator.secure_api`) in the same call, keeping
its :class:`~privacy.secagg.SecAggClient` (and so its fresh secret keys and shares) on its
own stack: advertise keys, poll for the adverts, send encrypted shares, poll for the shares
addressed to it, send the masked input (its pre-weighted update, see
:class:`privacy.secure_vector.UpdateEncoding`), poll for the unmask request, answer it with
its public metrics. State lives in one process and dies with it: a site that crashes
mid-round is a dropout and the others' sum still completes (up to n − t dropouts after key
sharing). A second delivery of the same round finds the first still running (same process:
it returns at once) or sees from the orchestrator that this site already took part and stops.

Normalization statistics go through the same path (:meth:`SecAggMode.start_stats`, round 0):
the site's moments (:func:`privacy.normstats.to_moments`) as exact fixed-point limbs. The
``he`` mode pools its statistics this way too.

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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings
from django.db import close_old_connections
from safetensors.numpy import load

from audit import trail
from common.node import load_node
from datasite.models import CodeRequest, RoundRun
from datasite.modes.base import SiteMode
from datasite.modes.secure import (
    SecureAbort,
    contribute_securely,
    deadline,
    enter,
    leave,
    send,
    session_client,
    shared_metrics,
    wait_for,
)
from datasite.preparation import study_stats
from datasite.results import post_update, stored_update
from datasite.studies import plan_of
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

_stats_started: dict[str, list] = {}
_stats_lock = threading.Lock()
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedsilo-secure")


class SecAggMode(SiteMode):
    name = "secagg"
    description = "secure aggregation (pairwise masking): the orchestrator sees only the sum"

    def contribute(self, run: RoundRun) -> bool:
        """Evaluation rounds release their metrics only; a training round's update goes into
        the secure sum (no plaintext update leaves)."""
        if run.eval_only:
            return post_update(run, None)
        return contribute_securely(run, self.contribute_update)

    def contribute_update(self, run: RoundRun) -> dict:
        """Take part in the round's session with the finished update; raises ``SecureAbort``."""
        request = run.request
        plan = plan_of(request)
        update = load(stored_update(run))
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

        outcome = _participate(run.study, run.round, request, vector_for, shared_metrics(run))
        return {**outcome, "clipped_values": sum(clipped)}

    def start_stats(self, request: CodeRequest) -> dict:
        """Compute this site's statistics moments and start its statistics session in the
        background.

        Answers the orchestrator with the moments' layout (names and shapes, no values); a
        repeated call answers the same layout and starts nothing new."""
        study = request.study
        with _stats_lock:
            if study in _stats_started:
                return {"layout": _stats_started[study]}
        stats = study_stats(study)
        moments = to_moments({k: {n: np.asarray(v) for n, v in by.items()} for k, by in stats.items()})
        layout = layout_from(moments)
        with _stats_lock:
            if study in _stats_started:
                return {"layout": _stats_started[study]}
            _stats_started[study] = layout_to_json(layout)
        _pool.submit(_run_stats, study, request.pk, moments, layout)
        return {"layout": layout_to_json(layout)}


def _verified_params(setup: dict, request: CodeRequest, study: str, number: int) -> SecAggParams:
    """The session's parameters, refused unless they match what the data owner approved."""
    plan = plan_of(request)
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
) -> dict:
    """Run the four phases; return the unmask request (who is in the sum). Raises SecureAbort."""
    until = deadline(plan_of(request))
    api = session_client(study, number)
    try:
        setup = wait_for(api, "/setup", "setup", until)
        if any(setup.get("progress", {}).values()):
            raise SecureAbort("this site already took part in this session (an earlier attempt)")
        params = _verified_params(setup, request, study, number)
        vector = vector_for(setup, params)  # checked against this site's own data before any key is made
        node = load_node(settings.NODE_DIR, settings.FEDSILO_SIGNING_KEY_FILE)
        if node is None:
            raise SecureAbort("secure aggregation needs the node folder's signing key")
        peers = {n: base64.b64decode(k) for n, k in request.site_keys.items() if n in params.sites}
        client = SecAggClient(settings.NODE_NAME, setup["session_id"], node.signing_key(), peers, params)

        send(api, "/advert", until, json=client.advertise_keys().to_dict())
        adverts = [KeyAdvert.from_dict(d) for d in wait_for(api, "/adverts", "adverts", until)]
        shares = client.share_keys(adverts)
        send(api, "/shares", until, json={"shares": [m.to_dict() for m in shares]})
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

        outcome = _participate(study, 0, request, vector_for, None)
        trail.record("statistics.secure_contributed", trail.SYSTEM, f"study:{study}", outcome)
    except SecureAbort as exc:
        log.warning("secure statistics of %s: this site drops out: %s", study, exc)
        trail.record("statistics.secure_aborted", trail.SYSTEM, f"study:{study}", {"reason": str(exc)[:500]})
    except Exception:
        log.exception("secure statistics of %s crashed", study)
    finally:
        leave(key)
        close_old_connections()
