"""Secure aggregation (``secagg`` mode) at the orchestrator: sessions, phase messages, the engine step.

Design
------
One :class:`~orchestrator.secure_models.SecureSession` per secure sum: the normalization
statistics of a study (``number`` 0) and each training round (``number`` = round). The
four SecAgg+ phases are separate HTTP messages from the sites (:mod:`orchestrator.secure_api`):

1. ``advert``  a site's signed :class:`~privacy.secagg.KeyAdvert`
2. ``shares``  its :class:`~privacy.secagg.EncryptedShare` list, routed to the receivers
3. ``masked``  its :class:`~privacy.secagg.MaskedInput` (raw little-endian uint32 body)
4. ``unmask``  its :class:`~privacy.secagg.UnmaskResponse` (and its public round metrics)

State lives in the database and in files, never in a process: the orchestrator serves
requests from several gunicorn workers and runs the engine in another process. Each message
is validated by rebuilding a :class:`~privacy.secagg.SecAggServer` from the stored messages
of the earlier phases (cheap: keys and ciphertexts, O(n²) small items) and calling its
``add_*`` method on the new one; valid messages are stored as rows. A masked input (one
uint32 per value, one-time-padded by the site's self mask and pairwise masks) is validated
and written as received to ``<study>/secure/session-<r>/masked/<site>.masked``, atomically
and under an exclusive file lock: one write per site, as a plain round stores each update
(a running sum file would cost a read, an add and a rewrite of the whole vector per site,
~3.5x the time at 1e7 values, for the sake of half the disk). The engine (:func:`drive`,
:func:`prepare`) closes a phase when every expected site has answered or the phase deadline
passed (phase 1: the round deadline, since sites train first; later phases:
``FEDSILO_SECAGG_PHASE_SECONDS``, default 120 s), with at least the threshold t of sites,
else the study fails. Closing the masked phase happens under the same file lock, so no
input joins after the survivors are fixed. To finish, the engine sums the survivors' stored
inputs in the ring, streaming them through the page cache (memory: one vector plus a chunk),
rebuilds the server once more, feeds it that sum as if it were the first survivor's input
(zeros for the others), adds the unmask responses, and ``finish()`` removes the masks. The
unmasked sum exists only in memory: it is dequantized, aggregated and applied to the global
weights, and the masked inputs are deleted. The database, the log, the checkpoints and the
session folder therefore never hold a site's plaintext or unmasked update
(``tests/orchestrator/test_secure_api.py`` and the end-to-end test inspect them).

Sites are authenticated per request by their API token; a message naming another site is
refused (403), a forged advert fails its Ed25519 signature against the key the site gave
when it joined (403), a message for another session or out of phase is a conflict (409),
a malformed one is a 400. A crashed site is a dropout: its client state is gone with it.

Trust: the orchestrator relays each member's long-term signing key with the code request;
the site pins the keys in the request its data owner approves and verifies every advert
against them (:mod:`datasite.secure_rounds`). A site therefore trusts the orchestrator to
relay genuine keys once, at request time (the data owner may compare the fingerprints
out of band); after that the orchestrator cannot substitute keys. The protocol protects
against an honest-but-curious orchestrator (see :mod:`privacy.secagg`).
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import math
import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.db import transaction
from django.utils import timezone

from audit import trail
from common.files import atomic_write
from common.protocol import Plan
from orchestrator import checkpoints, engine
from orchestrator.models import Datasite, Round, SiteUpdate, Study, StudySite
from orchestrator.secure_models import SecureMessage, SecureSession
from orchestrator.services import Conflict, NotFound, ServiceError
from orchestrator.sites import SiteClient, SiteUnreachable
from orchestrator.tensors import from_bytes, manifest_of
from privacy.normstats import bounds_from_moments, from_moments
from privacy.secagg import (
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    ProtocolError,
    SecAggError,
    SecAggParams,
    SecAggServer,
    SignatureError,
    UnmaskRequest,
    UnmaskResponse,
)
from privacy.secure_vector import (
    LIMBS,
    MAX_LIMB_SITES,
    EncodingError,
    UpdateEncoding,
    decode_moments,
    layout_from,
    layout_size,
    layout_to_json,
)
from privacy.strategies import ServerHParams, ServerState, aggregate, server_update

log = logging.getLogger(__name__)
SECURE_MODES = ("secagg", "he")
PHASE_SECONDS = float(os.environ.get("FEDSILO_SECAGG_PHASE_SECONDS", "120"))
MAX_METRICS_BYTES = 16 * 1024
_SUM_CHUNK = 1 << 18  # words per step of the ring sum of stored inputs (1 MiB)
Phase = SecureSession.Phase


class Forbidden(ServiceError):
    status = 403


def is_secure(plan: Plan | dict) -> bool:
    aggregation = plan.get("aggregation", "plain") if isinstance(plan, dict) else plan.aggregation
    return aggregation in SECURE_MODES


def handles(study: Study, rnd: Round) -> bool:
    """Whether the round engine hands this round to :func:`drive` (secure training rounds)."""
    return is_secure(study.plan) and not rnd.eval_only


# ----------------------------------------------------------------------------- proposal


def check_proposal(plan: Plan, n_sites: int) -> None:
    """Refuse a plan whose secure aggregation cannot run (called by ``services.propose``)."""
    if plan.aggregation == "plain":
        return
    if plan.aggregation not in SECURE_MODES:
        raise ServiceError(f"unknown aggregation mode {plan.aggregation!r}; use plain, secagg or he")
    if n_sites < 2:
        raise ServiceError("secure aggregation needs at least 2 sites")
    per_round = min(n_sites, max(plan.min_sites, math.ceil(plan.fraction * n_sites)))
    try:  # the statistics go through secagg in both modes
        SecAggParams(tuple(f"s{i}" for i in range(n_sites)), 1, plan.secure.clip, plan.secure.threshold)
        SecAggParams(tuple(f"s{i}" for i in range(per_round)), 1, plan.secure.clip, plan.secure.threshold)
    except ValueError as exc:
        raise ServiceError(f"secure aggregation with {per_round} sites per round: {exc}") from exc
    if plan.aggregation == "he":
        from orchestrator.he_rounds import check_he_proposal

        check_he_proposal(plan, n_sites, per_round)


# ----------------------------------------------------------------------------- sessions


def session_id(study_id: str, number: int) -> str:
    return f"fedsilo/{study_id}/" + ("stats" if number == 0 else f"round-{number}")


def _keys(names) -> dict[str, bytes]:
    sites = {s.name: s for s in Datasite.objects.filter(name__in=list(names))}
    return {n: base64.b64decode(sites[n].signing_key) for n in names if n in sites and sites[n].signing_key}


def _params(session: SecureSession) -> SecAggParams:
    return SecAggParams.from_dict(session.params)


def _server(session: SecureSession) -> SecAggServer:
    params = _params(session)
    return SecAggServer(session.session_id, params, _keys(params.sites))


def _update_encoding(study: Study) -> UpdateEncoding:
    plan = engine.plan_of(study)
    return UpdateEncoding(
        layout_from(study.manifest), plan.strategy, plan.secure.clip, plan.secure.max_weight, plan.local_steps
    )


def open_session(
    study: Study, number: int, kind: str, sites: list[str], layout: dict, length: int, clip: float, deadline
) -> SecureSession | None:
    plan = engine.plan_of(study)
    try:
        params = SecAggParams(tuple(sites), length, clip, plan.secure.threshold)
    except ValueError as exc:
        engine._fail(study, f"secure aggregation cannot start ({kind}, {len(sites)} sites): {exc}")
        return None
    with transaction.atomic():
        session, created = SecureSession.objects.get_or_create(
            study=study,
            number=number,
            defaults={
                "kind": kind,
                "session_id": session_id(study.pk, number),
                "params": params.to_dict(),
                "layout": layout,
                "phase_deadline": deadline,
            },
        )
        if created:
            trail.record(
                "secagg.opened",
                trail.SYSTEM,
                f"study:{study.pk}",
                {
                    "round": number,
                    "kind": kind,
                    "sites": list(params.sites),
                    "threshold": params.threshold,
                    "vector_length": length,
                },
            )
    return session


def session_folder(session: SecureSession) -> Path:
    path = checkpoints.study_dir(session.study_id) / "secure" / f"session-{session.number:05d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _masked_lock(session: SecureSession) -> Iterator[Path]:
    """Exclusive across processes: storing a masked input, closing the masked phase.

    Yields the folder of the session's masked inputs: ``<site>.masked`` is a site's
    ``MaskedInput`` blob exactly as received and validated, written atomically, so a file
    is there if and only if that input is in the round."""
    folder = session_folder(session)
    with open(folder / "masked.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            (folder / "masked").mkdir(exist_ok=True)
            yield folder / "masked"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _included(folder: Path) -> list[str]:
    """The sites whose masked input is stored in ``folder``."""
    return [p.name.removesuffix(".masked") for p in folder.glob("*.masked")]


def _masked_header(path: Path) -> tuple[dict, int]:
    """A stored blob's header and the offset of its vector (see ``MaskedInput.to_bytes``)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack(">I", fh.read(4))
        return json.loads(fh.read(n)), 4 + n


def _masked_sum(folder: Path, sites: list[str], length: int) -> tuple[np.ndarray, dict[str, bytes]]:
    """The ring sum of the stored inputs of ``sites``, read through the page cache chunk by
    chunk (memory: the sum plus a chunk), and each site's commitment to its self-mask seed."""
    total = np.zeros(length, dtype=np.uint32)
    commitments = {}
    for name in sites:
        path = folder / f"{name}.masked"
        header, offset = _masked_header(path)
        if header.get("site_id") != name or header.get("length") != length:
            raise ProtocolError(f"the stored masked input of {name} does not belong to this sum")
        commitments[name] = base64.b64decode(header["b_commitment"])
        vector = np.memmap(path, dtype="<u4", mode="r", offset=offset, shape=(length,))
        for a in range(0, length, _SUM_CHUNK):
            np.add(total[a : a + _SUM_CHUNK], vector[a : a + _SUM_CHUNK], out=total[a : a + _SUM_CHUNK])
        del vector
    return total, commitments


# ----------------------------------------------------------------------------- site messages


def session_for(site: Datasite, study_id: str, number: int) -> SecureSession:
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        raise NotFound(f"no study {study_id}")
    if study.status not in Study.ACTIVE:
        raise Conflict(f"the study is {study.status}")
    session = SecureSession.objects.filter(study=study, number=number).first()
    if session is None:
        current = number == study.current_round if number else study.status == Study.Status.PREPARING
        if current and is_secure(study.plan):
            raise NotFound(f"the secure session of round {number} is not open yet")
        raise Conflict(f"round {number} has no secure session in this study")
    if session.phase == Phase.FAILED:
        raise Conflict(f"the secure session of round {number} failed: {session.error}")
    if site.name not in session.params["sites"]:
        raise Conflict(f"{site.name} is not a participant of round {number}")
    return session


def locked(session: SecureSession) -> SecureSession:
    return SecureSession.objects.select_for_update().get(pk=session.pk)


def _parse(cls, data):
    try:
        return cls.from_dict(data)
    except ProtocolError as exc:
        raise ServiceError(f"malformed {cls.__name__}: {exc}") from exc


def _check_ids(session: SecureSession, site: Datasite, round_id: str, sender: str) -> None:
    if round_id != session.session_id:
        raise Conflict(f"the message is for session {round_id!r}, not {session.session_id!r}")
    if sender != site.name:
        raise Forbidden(f"{site.name} may only send its own messages, not {sender!r}'s")


def _protocol(fn, *args):
    try:
        return fn(*args)
    except SignatureError as exc:
        raise Forbidden(str(exc)) from exc
    except SecAggError as exc:
        raise ServiceError(str(exc)) from exc


def messages(session: SecureSession, phase: str) -> dict[str, dict]:
    return dict(SecureMessage.objects.filter(session=session, phase=phase).values_list("site", "payload"))


def record(session: SecureSession, site: Datasite, phase: str, payload: dict) -> None:
    SecureMessage.objects.update_or_create(
        session=session, phase=phase, site=site.name, defaults={"payload": payload}
    )
    trail.record(
        f"{session.mode}.{phase}_received",
        f"node:{site.name}",
        f"study:{session.study_id}",
        {"round": session.number},
    )


def setup(site: Datasite, study_id: str, number: int) -> dict:
    """``{"setup": ...}``: what a site needs to take part (session id, parameters, layout, the
    members' keys, its progress), or ``{"setup": None}`` while the session is not open yet."""
    try:
        session = session_for(site, study_id, number)
    except NotFound:
        if Study.objects.filter(pk=study_id).exists():
            return {"setup": None}
        raise
    params = _params(session)
    rnd = Round.objects.filter(study_id=study_id, number=number).first()
    keys = _keys(params.sites)
    with _masked_lock(session) as folder:
        included = _included(folder)
    return {
        "setup": {
            "session_id": session.session_id,
            "mode": session.mode,
            "kind": session.kind,
            "round": number,
            "params": session.params,
            "layout": session.layout,
            "phase": session.phase,
            "deadline": (rnd.deadline if rnd else session.phase_deadline).isoformat(),
            "site_keys": {s: base64.b64encode(k).decode() for s, k in keys.items()},
            "progress": {
                "advert": SecureMessage.objects.filter(
                    session=session, phase="advert", site=site.name
                ).exists(),
                "shares": SecureMessage.objects.filter(
                    session=session, phase="shares", site=site.name
                ).exists(),
                "masked": site.name in included,
                "unmask": SecureMessage.objects.filter(
                    session=session, phase="unmask", site=site.name
                ).exists(),
            },
        }
    }


def receive_advert(site: Datasite, study_id: str, number: int, data: object) -> None:
    """Phase 1. A site may replace its advert while the phase is open (nobody has seen it yet)."""
    session = session_for(site, study_id, number)
    msg = _parse(KeyAdvert, data)
    _check_ids(session, site, msg.round_id, msg.site_id)
    with transaction.atomic():
        session = locked(session)
        if session.phase != Phase.ADVERTISE:
            raise Conflict("key advertisement is closed in this session")
        server = _server(session)
        for name, payload in messages(session, "advert").items():
            if name != site.name:
                server.add_advert(KeyAdvert.from_dict(payload))
        _protocol(server.add_advert, msg)
        record(session, site, "advert", msg.to_dict())


def adverts(site: Datasite, study_id: str, number: int) -> dict:
    session = session_for(site, study_id, number)
    if session.phase == Phase.ADVERTISE:
        return {"phase": session.phase, "adverts": None}
    if site.name not in session.advertised:
        raise Conflict(f"{site.name} did not advertise keys in time")
    stored = messages(session, "advert")
    return {"phase": session.phase, "adverts": [stored[s] for s in session.advertised]}


def _server_at_share(session: SecureSession, skip: str | None = None) -> SecAggServer:
    server = _server(session)
    stored = messages(session, "advert")
    server.collect_adverts([KeyAdvert.from_dict(stored[s]) for s in session.advertised])
    for name, payload in sorted(messages(session, "shares").items()):
        if name != skip:
            server.add_shares([EncryptedShare.from_dict(d) for d in payload["shares"]])
    return server


def receive_shares(site: Datasite, study_id: str, number: int, data: object) -> None:
    """Phase 2: one share for each other advertised site, encrypted for it (opaque here)."""
    session = session_for(site, study_id, number)
    items = data.get("shares") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or len(items) > 10_000:
        raise ServiceError("expected {'shares': [one EncryptedShare per receiver]}")
    shares = [_parse(EncryptedShare, d) for d in items]
    for m in shares:
        _check_ids(session, site, m.round_id, m.sender)
    with transaction.atomic():
        session = locked(session)
        if session.phase != Phase.SHARE:
            raise Conflict(f"key sharing is not open (phase {session.phase})")
        if site.name not in session.advertised:
            raise Conflict(f"{site.name} did not advertise keys in time")
        if SecureMessage.objects.filter(session=session, phase="shares", site=site.name).exists():
            raise Conflict(f"{site.name} already sent its shares")
        _protocol(_server_at_share(session).add_shares, shares)
        record(session, site, "shares", {"shares": [m.to_dict() for m in shares]})


def shares_for(site: Datasite, study_id: str, number: int) -> dict:
    session = session_for(site, study_id, number)
    if session.phase in (Phase.ADVERTISE, Phase.SHARE):
        return {"phase": session.phase, "shares": None}
    if site.name not in session.shared:
        raise Conflict(f"{site.name} did not share keys in time")
    routed = [
        d
        for _, payload in sorted(messages(session, "shares").items())
        for d in payload["shares"]
        if d["receiver"] == site.name
    ]
    return {"phase": session.phase, "shares": routed}


def masked_limit(study_id: str, number: int) -> int:
    session = SecureSession.objects.filter(study_id=study_id, number=number).first()
    return 4 * session.params["vector_length"] + 64 * 1024 if session else 64 * 1024


def receive_masked(site: Datasite, study_id: str, number: int, blob: bytes) -> None:
    """Phase 3: keep a validated masked input until the round's sum is formed."""
    session = session_for(site, study_id, number)
    try:
        msg = MaskedInput.from_bytes(blob)
    except ProtocolError as exc:
        raise ServiceError(f"malformed masked input: {exc}") from exc
    _check_ids(session, site, msg.round_id, msg.site_id)
    length = session.params["vector_length"]
    if msg.vector.shape != (length,):
        raise ServiceError(f"the masked input must have {length} uint32 words, not {msg.vector.shape[0]}")
    if len(msg.b_commitment) != 32:
        raise ServiceError("b_commitment must be 32 bytes")
    with _masked_lock(session) as folder:
        session.refresh_from_db()
        if session.phase != Phase.MASK:
            raise Conflict(f"masked inputs are not accepted now (phase {session.phase})")
        if site.name not in session.shared:
            raise Conflict(f"{site.name} did not share keys in time")
        if site.name in _included(folder):
            raise Conflict(f"{site.name} already sent its masked input")
        atomic_write(folder / f"{site.name}.masked", blob)
        with transaction.atomic():
            record(session, site, "masked", msg.header())


def unmask_request(site: Datasite, study_id: str, number: int) -> dict:
    session = session_for(site, study_id, number)
    if session.phase not in (Phase.UNMASK, Phase.DONE):
        return {"phase": session.phase, "request": None}
    if site.name not in session.survivors:
        raise Conflict(f"{site.name}'s masked input is not in the sum")
    request = UnmaskRequest(session.session_id, tuple(session.survivors), tuple(session.dropped))
    return {"phase": session.phase, "request": request.to_dict()}


def receive_unmask(site: Datasite, study_id: str, number: int, data: object) -> None:
    """Phase 4: a survivor's shares (b of survivors, s_sk of dropped sites) and its public metrics."""
    session = session_for(site, study_id, number)
    if not isinstance(data, dict):
        raise ServiceError("expected {'response': UnmaskResponse, 'metrics': {...}}")
    msg = _parse(UnmaskResponse, data.get("response"))
    _check_ids(session, site, msg.round_id, msg.site_id)
    metrics = data.get("metrics") or {}
    if not isinstance(metrics, dict) or len(json.dumps(metrics)) > MAX_METRICS_BYTES:
        raise ServiceError("metrics must be a small JSON object")
    with transaction.atomic():
        session = locked(session)
        if session.phase != Phase.UNMASK:
            raise Conflict(f"unmask responses are not accepted now (phase {session.phase})")
        if site.name not in session.survivors:
            raise Conflict(f"{site.name}'s masked input is not in the sum")
        if SecureMessage.objects.filter(session=session, phase="unmask", site=site.name).exists():
            raise Conflict(f"{site.name} already answered the unmask request")
        group = _params(session).graph(session.session_id)[site.name] | {site.name}
        bad_b = msg.b_shares.keys() - (set(session.survivors) & group)
        bad_s = msg.s_shares.keys() - (set(session.dropped) & group)
        if bad_b or bad_s:
            raise ServiceError(
                f"the response reveals shares it must not (b: {sorted(bad_b)}, s_sk: {sorted(bad_s)})"
            )
        record(session, site, "unmask", msg.to_dict())
        if session.kind == SecureSession.Kind.UPDATE:
            rnd = Round.objects.get(study_id=study_id, number=number)
            SiteUpdate.objects.get_or_create(
                round=rnd,
                datasite=site,
                defaults={"local_steps": engine.plan_of(session.study).local_steps, "metrics": metrics},
            )


# ----------------------------------------------------------------------------- the engine step


def fail_session(session: SecureSession, reason: str) -> None:
    SecureSession.objects.filter(pk=session.pk).update(phase=Phase.FAILED, error=reason)
    study = Study.objects.get(pk=session.study_id)
    if session.kind == SecureSession.Kind.UPDATE:
        Round.objects.filter(study=study, number=session.number).update(
            status=Round.Status.FAILED, finished_at=timezone.now()
        )
    engine._fail(study, f"secure aggregation of round {session.number} failed: {reason}")
    discard_files(session)


def discard_files(session: SecureSession) -> None:
    """Delete what a session kept on disk: the masked inputs (secagg), the chunks (he)."""
    folder = session_folder(session)
    shutil.rmtree(folder / "masked", ignore_errors=True)
    shutil.rmtree(folder / "he", ignore_errors=True)


def gone_sites(session: SecureSession) -> set[str]:
    """Sites known not to take part: refused the round or reported an error."""
    if session.kind != SecureSession.Kind.UPDATE:
        return set()
    rnd = Round.objects.get(study_id=session.study_id, number=session.number)
    errors = SiteUpdate.objects.filter(round=rnd).exclude(error="").values_list("datasite__name", flat=True)
    return set(rnd.dropped) | set(errors)


def move(session: SecureSession, phase: str, **fields) -> None:
    deadline = timezone.now() + timedelta(seconds=PHASE_SECONDS)
    SecureSession.objects.filter(pk=session.pk).update(phase=phase, phase_deadline=deadline, **fields)
    for key, value in fields.items():
        setattr(session, key, value)
    session.phase, session.phase_deadline = phase, deadline
    trail.record(
        "secagg.phase",
        trail.SYSTEM,
        f"study:{session.study_id}",
        {"round": session.number, "phase": phase, **fields},
    )


def _advance(session: SecureSession) -> np.ndarray | None:
    """Close the current phase if it is complete or late; the unmasked sum once it is done."""
    params = _params(session)
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
        with _masked_lock(session) as folder:
            included = _included(folder)
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
    server = _server_at_share(session)
    server.route_shares()
    with _masked_lock(session) as folder:
        if sorted(_included(folder)) != sorted(session.survivors):
            raise ProtocolError("the stored masked inputs do not match the recorded survivors")
        total, commitments = _masked_sum(folder, session.survivors, _params(session).vector_length)
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


def drive(study: Study, rnd: Round) -> None:
    """One engine step of a secure training round (called by ``engine._drive_round``)."""
    if engine.plan_of(study).aggregation == "he":
        from orchestrator import he_rounds

        return he_rounds.drive(study, rnd)
    session = SecureSession.objects.filter(study=study, number=rnd.number).first()
    if session is None:
        enc = _update_encoding(study)
        session = open_session(
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
            return
    if session.phase == Phase.ADVERTISE and (
        rnd.last_sent_at is None or timezone.now() - rnd.last_sent_at > engine.RESEND_EVERY
    ):
        engine._send_round(study, rnd)  # sites that already advertised ignore the copy
    if session.phase in (Phase.DONE, Phase.FAILED):
        return
    before = session.phase
    result = _advance(session)
    if session.phase != before:
        engine._set(study, phase=f"secagg:{session.phase}")
    if result is not None:
        survivors = list(session.survivors)
        params = _params(session)
        summed = params.dequantize_sum(result, len(survivors))
        del result
        close_round(
            study,
            rnd,
            session,
            summed,
            {
                "threshold": params.threshold,
                "survivors": survivors,
                "dropped_after_sharing": list(session.dropped),
                "advertised": list(session.advertised),
            },
        )


def close_round(study: Study, rnd: Round, session: SecureSession, summed: np.ndarray, secure: dict) -> None:
    """Apply a secure round's decoded float sum (``UpdateEncoding`` form) and finish the round."""
    plan = engine.plan_of(study)
    survivors = list(session.survivors)
    if len(survivors) < plan.min_sites:
        return fail_session(session, f"{len(survivors)} site(s) in the sum, the plan needs {plan.min_sites}")
    try:
        arrays, scalars = _update_encoding(study).decode(summed)
    except EncodingError as exc:
        return fail_session(session, f"the sum does not decode: {exc}")
    del summed
    avg = aggregate(arrays, scalars, plan.strategy)
    del arrays
    weights, state = checkpoints.load(study.pk, rnd.number - 1)
    new_weights, new_state = server_update(
        plan.strategy, weights, avg, state, ServerHParams.from_dict(plan.server)
    )
    checkpoints.save(study.pk, rnd.number, new_weights, new_state)
    discard_files(session)
    ok = {
        u.datasite.name: u
        for u in rnd.updates.select_related("datasite")
        if not u.error and u.datasite.name in survivors
    }
    metrics = {**rnd.metrics, **engine._round_metrics(ok)}
    metrics.pop("num_examples", None)  # hidden in the secure sum
    metrics["secure"] = {"mode": session.mode, **secure}
    dropped = sorted(set(rnd.participants) - set(survivors))
    with transaction.atomic():
        SecureSession.objects.filter(pk=session.pk).update(phase=Phase.DONE)
        engine.finish_round(study, rnd, survivors, dropped, metrics, mode=session.mode)


# ----------------------------------------------------------------------------- statistics


def prepare(study: Study) -> None:
    """Secure ``engine._prepare``: pool statistics through a secure sum, then initial weights."""
    sites = engine._approved_sites(study)
    names = sorted(s.datasite.name for s in sites)
    session = SecureSession.objects.filter(study=study, number=0).first()
    if session is None:
        _open_stats(study, sites, names)
        return
    if session.phase == Phase.FAILED:
        return
    if session.phase != Phase.DONE:
        before = session.phase
        result = _advance(session)
        if session.phase != before:
            engine._set(study, phase=f"secagg:{session.phase}")
        if result is None or not _finish_stats(study, session, result):
            return
        study.refresh_from_db()
    if engine.plan_of(study).aggregation == "he":
        from orchestrator import he_rounds

        if not he_rounds.ceremony(study):
            return
    with SiteClient(sites[0].datasite) as client:
        try:
            weights = from_bytes(client.initial_weights(study.pk, study.norm_stats))
        except SiteUnreachable as exc:
            log.info("initial weights not available yet: %s", exc)
            return
    checkpoints.save(study.pk, 0, weights, ServerState(strategy=engine.plan_of(study).strategy))
    engine._set(
        study, manifest=manifest_of(weights), status=Study.Status.RUNNING, current_round=1, phase="train"
    )


def _open_stats(study: Study, sites: list[StudySite], names: list[str]) -> None:
    """Ask every approved site to start its statistics session; open it when all agree on the layout."""
    layouts = {}
    for site in sites:
        with SiteClient(site.datasite) as client:
            try:
                answer = client._call("POST", f"/secure/studies/{study.pk}/stats", timeout=600).json()
            except SiteUnreachable as exc:
                log.info("secure statistics of %s not started: %s", site.datasite.name, exc)
                return
        layouts[site.datasite.name] = answer.get("layout")
    distinct = {json.dumps(v, sort_keys=True) for v in layouts.values()}
    if len(distinct) != 1:
        engine._fail(study, "the sites describe different statistics features; they cannot be pooled")
        return
    if len(names) > MAX_LIMB_SITES:
        engine._fail(study, f"secure statistics support at most {MAX_LIMB_SITES} sites")
        return
    try:
        layout = layout_from(next(iter(layouts.values())))
    except (TypeError, KeyError, ValueError) as exc:
        engine._fail(study, f"malformed statistics layout: {exc}")
        return
    deadline = timezone.now() + timedelta(seconds=engine.plan_of(study).round_timeout_s)
    open_session(
        study,
        0,
        SecureSession.Kind.STATS,
        names,
        {"moments": layout_to_json(layout)},
        LIMBS * layout_size(layout),
        1.0,
        deadline,
    )
    engine._set(study, phase="secagg:advertise")


def _finish_stats(study: Study, session: SecureSession, q_sum: np.ndarray) -> bool:
    try:
        summed = decode_moments(q_sum, layout_from(session.layout["moments"]))
        mins, maxs = bounds_from_moments(summed)
        pooled = from_moments(summed, mins, maxs)
    except (EncodingError, ValueError) as exc:
        fail_session(session, f"pooled statistics: {exc}")
        return False
    norm_stats = {k: {n: np.asarray(v).tolist() for n, v in by.items()} for k, by in pooled.items()}
    discard_files(session)
    with transaction.atomic():
        SecureSession.objects.filter(pk=session.pk).update(phase=Phase.DONE)
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
    engine._set(study, norm_stats=norm_stats, phase="initialisation")
    return True
