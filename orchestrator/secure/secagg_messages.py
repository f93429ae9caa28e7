"""The ``secagg`` sites' messages (the phase handlers :mod:`orchestrator.secure_api` calls).

Each message is validated by rebuilding the session's :class:`~privacy.secagg.SecAggServer`
from the stored messages of the earlier phases and calling its ``add_*`` method on the new
one; valid messages are stored (:mod:`orchestrator.secure.sessions`). A message naming
another site is refused (403), a forged advert fails its Ed25519 signature against the key
the site gave when it joined (403), a message for another session or out of phase is a
conflict (409), a malformed one is a 400. A crashed site is a dropout: its client state is
gone with it.
"""

from __future__ import annotations

import base64
import json

from django.db import transaction

from common.errors import Conflict, Forbidden, NotFound, ServiceError
from common.files import atomic_write
from orchestrator import studies
from orchestrator.models import Datasite, Round, SiteUpdate, Study
from orchestrator.secure import sessions
from orchestrator.secure.messages import MAX_METRICS_BYTES, locked, session_for
from orchestrator.secure_models import SecureMessage, SecureSession
from privacy.secagg import (
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    ProtocolError,
    SecAggError,
    SignatureError,
    UnmaskRequest,
    UnmaskResponse,
)

Phase = SecureSession.Phase


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


def setup(site: Datasite, study_id: str, number: int) -> dict:
    """``{"setup": ...}``: what a site needs to take part (session id, parameters, layout, the
    members' keys, its progress), or ``{"setup": None}`` while the session is not open yet."""
    try:
        session = session_for(site, study_id, number)
    except NotFound:
        if Study.objects.filter(pk=study_id).exists():
            return {"setup": None}
        raise
    params = sessions.params(session)
    rnd = Round.objects.filter(study_id=study_id, number=number).first()
    keys = sessions.site_keys(params.sites)
    with sessions.masked_lock(session) as folder:
        included = sessions.included(folder)
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
        server = sessions.server(session)
        for name, payload in sessions.messages(session, "advert").items():
            if name != site.name:
                server.add_advert(KeyAdvert.from_dict(payload))
        _protocol(server.add_advert, msg)
        sessions.record(session, site, "advert", msg.to_dict())


def adverts(site: Datasite, study_id: str, number: int) -> dict:
    session = session_for(site, study_id, number)
    if session.phase == Phase.ADVERTISE:
        return {"phase": session.phase, "adverts": None}
    if site.name not in session.advertised:
        raise Conflict(f"{site.name} did not advertise keys in time")
    stored = sessions.messages(session, "advert")
    return {"phase": session.phase, "adverts": [stored[s] for s in session.advertised]}


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
        _protocol(sessions.server_at_share(session).add_shares, shares)
        sessions.record(session, site, "shares", {"shares": [m.to_dict() for m in shares]})


def shares_for(site: Datasite, study_id: str, number: int) -> dict:
    session = session_for(site, study_id, number)
    if session.phase in (Phase.ADVERTISE, Phase.SHARE):
        return {"phase": session.phase, "shares": None}
    if site.name not in session.shared:
        raise Conflict(f"{site.name} did not share keys in time")
    routed = [
        d
        for _, payload in sorted(sessions.messages(session, "shares").items())
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
    with sessions.masked_lock(session) as folder:
        session.refresh_from_db()
        if session.phase != Phase.MASK:
            raise Conflict(f"masked inputs are not accepted now (phase {session.phase})")
        if site.name not in session.shared:
            raise Conflict(f"{site.name} did not share keys in time")
        if site.name in sessions.included(folder):
            raise Conflict(f"{site.name} already sent its masked input")
        atomic_write(folder / f"{site.name}.masked", blob)
        with transaction.atomic():
            sessions.record(session, site, "masked", msg.header())


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
        group = sessions.params(session).graph(session.session_id)[site.name] | {site.name}
        bad_b = msg.b_shares.keys() - (set(session.survivors) & group)
        bad_s = msg.s_shares.keys() - (set(session.dropped) & group)
        if bad_b or bad_s:
            raise ServiceError(
                f"the response reveals shares it must not (b: {sorted(bad_b)}, s_sk: {sorted(bad_s)})"
            )
        sessions.record(session, site, "unmask", msg.to_dict())
        if session.kind == SecureSession.Kind.UPDATE:
            rnd = Round.objects.get(study_id=study_id, number=number)
            SiteUpdate.objects.get_or_create(
                round=rnd,
                datasite=site,
                defaults={"local_steps": studies.plan_of(session.study).local_steps, "metrics": metrics},
            )
