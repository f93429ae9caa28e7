"""The ``secagg`` mode: SecAgg+ pairwise masking with threshold recovery (:mod:`privacy.secagg`).

Design
------
Each secure sum (the study's normalization statistics, then each training round) is a
session (:mod:`orchestrator.secure.sessions`). The four SecAgg+ phases are separate HTTP
messages from the sites (:mod:`orchestrator.secure.secagg_messages`):

1. ``advert``  a site's signed :class:`~privacy.secagg.KeyAdvert`
2. ``shares``  its :class:`~privacy.secagg.EncryptedShare` list, routed to the receivers
3. ``masked``  its :class:`~privacy.secagg.MaskedInput` (raw little-endian uint32 body)
4. ``unmask``  its :class:`~privacy.secagg.UnmaskResponse` (and its public round metrics)

The engine step (:meth:`SecAggMode.drive`, :meth:`SecAggMode.prepare`) closes a phase when
every expected site has answered or the phase deadline passed (phase 1: the round deadline,
since sites train first; later phases: ``FEDSILO_SECAGG_PHASE_SECONDS``), with at least the
threshold t of sites, else the study fails. Closing the masked phase happens under the
masked-input file lock, so no input joins after the survivors are fixed. To finish, the
engine sums the survivors' stored inputs in the ring, rebuilds the server once more, feeds
it that sum as if it were the first survivor's input (zeros for the others), adds the
unmask responses, and ``finish()`` removes the masks. The unmasked sum exists only in
memory: it is dequantized, aggregated and applied to the global weights
(:meth:`SecAggMode.close`), and the masked inputs are deleted. The database, the log, the
checkpoints and the session folder therefore never hold a site's plaintext or unmasked
update (``tests/orchestrator/test_secure_api.py`` and the end-to-end test inspect them).

Trust: the orchestrator relays each member's long-term signing key with the code request;
the site pins the keys in the request its data owner approves and verifies every advert
against them (:mod:`datasite.modes.secagg`). A site therefore trusts the orchestrator to
relay genuine keys once, at request time (the data owner may compare the fingerprints
out of band); after that the orchestrator cannot substitute keys. The protocol protects
against an honest-but-curious orchestrator (see :mod:`privacy.secagg`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.db import transaction
from django.utils import timezone

from audit import trail
from common.errors import ServiceError
from common.protocol import Plan
from orchestrator import checkpoints, studies
from orchestrator.models import Round, Study, StudySite
from orchestrator.modes.base import RoundMode
from orchestrator.secure import sessions
from orchestrator.secure.sessions import fail_session, gone_sites, messages, move
from orchestrator.secure_models import SecureSession
from orchestrator.sites import SiteClient, SiteUnreachable
from privacy.normstats import bounds_from_moments, from_moments
from privacy.secagg import MaskedInput, ProtocolError, SecAggError, SecAggParams, UnmaskResponse
from privacy.secure_vector import (
    LIMBS,
    MAX_LIMB_SITES,
    EncodingError,
    decode_moments,
    layout_from,
    layout_size,
    layout_to_json,
)
from privacy.strategies import ServerHParams, aggregate, server_update

log = logging.getLogger(__name__)
Phase = SecureSession.Phase


@dataclass(frozen=True)
class SecureSum:
    """A secure round's decoded float sum (``UpdateEncoding`` form) and what to record of it."""

    session: SecureSession
    summed: np.ndarray
    secure: dict


class SecAggMode(RoundMode[SecureSum]):
    name = "secagg"
    secure = True

    def check_proposal(self, plan: Plan, n_sites: int) -> None:
        if plan.robust.method != "none":
            raise ServiceError(
                "robust aggregation needs every update in the clear; only plain mode allows it"
            )
        if n_sites < 2:
            raise ServiceError("secure aggregation needs at least 2 sites")
        per_round = min(n_sites, max(plan.min_sites, math.ceil(plan.fraction * n_sites)))
        try:  # the statistics go through secagg in every secure mode
            SecAggParams(tuple(f"s{i}" for i in range(n_sites)), 1, plan.secure.clip, plan.secure.threshold)
            SecAggParams(tuple(f"s{i}" for i in range(per_round)), 1, plan.secure.clip, plan.secure.threshold)
        except ValueError as exc:
            raise ServiceError(f"secure aggregation with {per_round} sites per round: {exc}") from exc

    # ------------------------------------------------------------------------- preparation

    def prepare(self, study: Study) -> None:
        """Pool statistics through a secure sum, then the mode's keys, then initial weights."""
        sites = studies.approved_sites(study)
        if self.pool_statistics(study, sites) and self.prepare_keys(study):
            studies.initialise(study, sites[0])

    def prepare_keys(self, study: Study) -> bool:
        """One step of the mode's key set-up; True once done (secagg: keys are per session)."""
        return True

    def pool_statistics(self, study: Study, sites: list[StudySite]) -> bool:
        """One step of the statistics session (round 0); True once the pooled statistics are set."""
        session = SecureSession.objects.filter(study=study, number=0).first()
        if session is None:
            _open_stats(study, sites)
            return False
        if session.phase == Phase.FAILED:
            return False
        if session.phase != Phase.DONE:
            before = session.phase
            result = _advance(session)
            if session.phase != before:
                studies.update(study, phase=f"secagg:{session.phase}")
            if result is None or not _finish_stats(study, session, result):
                return False
            study.refresh_from_db()
        return True

    # ------------------------------------------------------------------------- rounds

    def drive(self, study: Study, rnd: Round) -> SecureSum | None:
        session = SecureSession.objects.filter(study=study, number=rnd.number).first()
        if session is None:
            enc = sessions.update_encoding(study)
            session = sessions.open_session(
                study,
                rnd.number,
                SecureSession.Kind.UPDATE,
                list(rnd.participants),
                {
                    "manifest": layout_to_json(enc.layout),
                    "strategy": enc.strategy,
                    "max_weight": enc.max_weight,
                    "max_steps": enc.max_steps,
                    "scalars": list(enc.scalars),
                },
                enc.length,
                enc.clip,
                rnd.deadline,
            )
            if session is None:
                return None
        if session.phase == Phase.ADVERTISE and studies.resend_due(rnd):
            studies.send_round(study, rnd)  # sites that already advertised ignore the copy
        if session.phase in (Phase.DONE, Phase.FAILED):
            return None
        before = session.phase
        result = _advance(session)
        if session.phase != before:
            studies.update(study, phase=f"secagg:{session.phase}")
        if result is None:
            return None
        params = sessions.params(session)
        summed = params.dequantize_sum(result, len(session.survivors))
        del result
        return SecureSum(
            session,
            summed,
            {
                "threshold": params.threshold,
                "survivors": list(session.survivors),
                "dropped_after_sharing": list(session.dropped),
                "advertised": list(session.advertised),
            },
        )

    def close(self, study: Study, rnd: Round, total: SecureSum) -> None:
        """Apply the decoded sum to the global weights and finish the round."""
        plan = studies.plan_of(study)
        session = total.session
        survivors = list(session.survivors)
        if len(survivors) < plan.min_sites:
            return fail_session(
                session, f"{len(survivors)} site(s) in the sum, the plan needs {plan.min_sites}"
            )
        try:
            arrays, scalars = sessions.update_encoding(study).decode(total.summed)
        except EncodingError as exc:
            return fail_session(session, f"the sum does not decode: {exc}")
        avg = aggregate(arrays, scalars, plan.strategy)
        del arrays
        weights, state = checkpoints.load(study.pk, rnd.number - 1)
        new_weights, new_state = server_update(
            plan.strategy, weights, avg, state, ServerHParams.from_dict(plan.server)
        )
        checkpoints.save(study.pk, rnd.number, new_weights, new_state)
        sessions.discard_files(session)
        ok = {
            u.datasite.name: u
            for u in rnd.updates.select_related("datasite")
            if not u.error and u.datasite.name in survivors
        }
        metrics = {**rnd.metrics, **studies.round_metrics(ok)}
        metrics.pop("num_examples", None)  # hidden in the secure sum
        metrics["secure"] = {"mode": session.mode, **total.secure}
        dropped = sorted(set(rnd.participants) - set(survivors))
        with transaction.atomic():
            sessions.finish(session)
            studies.finish_round(study, rnd, survivors, dropped, metrics, mode=session.mode)


# ----------------------------------------------------------------------------- closing phases


def _advance(session: SecureSession) -> np.ndarray | None:
    """Close the current phase if it is complete or late; the unmasked sum once it is done."""
    params = sessions.params(session)
    t = params.threshold
    order = {s: i for i, s in enumerate(params.sites)}
    late = timezone.now() >= session.phase_deadline
    if session.phase == Phase.ADVERTISE:
        got = set(messages(session, "advert"))
        if set(params.sites) - gone_sites(session) <= got or late:
            if len(got) < t:
                return fail_session(session, f"{len(got)} site(s) advertised keys, threshold is {t}")
            move(session, Phase.SHARE, advertised=sorted(got, key=order.get))
    elif session.phase == Phase.SHARE:
        got = set(messages(session, "shares"))
        if set(session.advertised) <= got or late:
            if len(got) < t:
                return fail_session(session, f"{len(got)} site(s) shared keys, threshold is {t}")
            move(session, Phase.MASK, shared=sorted(got, key=order.get))
    elif session.phase == Phase.MASK:
        with sessions.masked_lock(session) as folder:
            included = sessions.included(folder)
            if set(session.shared) <= set(included) or late:
                if len(included) < t:
                    return fail_session(session, f"{len(included)} masked input(s) arrived, threshold is {t}")
                survivors = sorted(included, key=order.get)
                dropped = sorted(set(session.shared) - set(included), key=order.get)
                move(session, Phase.UNMASK, survivors=survivors, dropped=dropped)
    elif session.phase == Phase.UNMASK:
        got = set(messages(session, "unmask"))
        if set(session.survivors) <= got or late:
            try:
                return _unmask(session)
            except (SecAggError, ValueError) as exc:
                return fail_session(session, str(exc))
    return None


def _unmask(session: SecureSession) -> np.ndarray:
    """Rebuild the server from the stored messages and the masked inputs; remove the masks."""
    server = sessions.server_at_share(session)
    server.route_shares()
    with sessions.masked_lock(session) as folder:
        if sorted(sessions.included(folder)) != sorted(session.survivors):
            raise ProtocolError("the stored masked inputs do not match the recorded survivors")
        total, commitments = sessions.masked_sum(
            folder, session.survivors, sessions.params(session).vector_length
        )
    zero = np.broadcast_to(np.uint32(0), total.shape)  # the server is fed the sum as one input
    for i, name in enumerate(session.survivors):
        vector = total if i == 0 else zero
        server.add_masked_input(MaskedInput(session.session_id, name, vector, commitments[name]))
    del total
    request = server.unmask_request()
    if list(request.survivors) != session.survivors or list(request.dropped) != session.dropped:
        raise ProtocolError("the rebuilt unmask request differs from the one sent")
    responses = [UnmaskResponse.from_dict(p) for _, p in sorted(messages(session, "unmask").items())]
    return server.finish(responses)


# ----------------------------------------------------------------------------- statistics


def _open_stats(study: Study, sites: list[StudySite]) -> None:
    """Ask every approved site to start its statistics session; open it when all agree on the layout."""
    layouts = {}
    for site in sites:
        with SiteClient(site.datasite) as client:
            try:
                answer = client.secure_stats(study.pk)
            except SiteUnreachable as exc:
                log.info("secure statistics of %s not started: %s", site.datasite.name, exc)
                return
        layouts[site.datasite.name] = answer.get("layout")
    distinct = {json.dumps(v, sort_keys=True) for v in layouts.values()}
    if len(distinct) != 1:
        studies.fail(study, "the sites describe different statistics features; they cannot be pooled")
        return
    names = sorted(s.datasite.name for s in sites)
    if len(names) > MAX_LIMB_SITES:
        studies.fail(study, f"secure statistics support at most {MAX_LIMB_SITES} sites")
        return
    try:
        layout = layout_from(next(iter(layouts.values())))
    except (TypeError, KeyError, ValueError) as exc:
        studies.fail(study, f"malformed statistics layout: {exc}")
        return
    deadline = timezone.now() + timedelta(seconds=studies.plan_of(study).round_timeout_s)
    sessions.open_session(
        study,
        0,
        SecureSession.Kind.STATS,
        names,
        {"moments": layout_to_json(layout)},
        LIMBS * layout_size(layout),
        1.0,
        deadline,
    )
    studies.update(study, phase="secagg:advertise")


def _finish_stats(study: Study, session: SecureSession, q_sum: np.ndarray) -> bool:
    try:
        summed = decode_moments(q_sum, layout_from(session.layout["moments"]))
        mins, maxs = bounds_from_moments(summed)
        pooled = from_moments(summed, mins, maxs)
    except (EncodingError, ValueError) as exc:
        fail_session(session, f"pooled statistics: {exc}")
        return False
    norm_stats = {k: {n: np.asarray(v).tolist() for n, v in by.items()} for k, by in pooled.items()}
    sessions.discard_files(session)
    with transaction.atomic():
        sessions.finish(session)
        trail.record(
            "statistics.pooled",
            trail.SYSTEM,
            f"study:{study.pk}",
            {
                "mode": session.mode,
                "sites": list(session.survivors),
                "dropped_after_sharing": list(session.dropped),
            },
        )
    studies.update(study, norm_stats=norm_stats, phase="initialisation")
    return True
