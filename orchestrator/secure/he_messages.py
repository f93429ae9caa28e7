"""The ``he`` sites' messages (the phase handlers :mod:`orchestrator.secure_api` calls): encrypted
chunk uploads, the commit that joins a site's update to the sum, the aggregate frames served
to the site asked to decrypt (see :mod:`orchestrator.modes.he` for the protocol)."""

from __future__ import annotations

from django.db import transaction

from common.errors import Conflict, ServiceError
from common.files import atomic_write
from orchestrator import studies
from orchestrator.models import Datasite, Round, SiteUpdate
from orchestrator.secure import he_files, sessions
from orchestrator.secure.messages import MAX_METRICS_BYTES, locked, session_for
from orchestrator.secure_models import SecureMessage, SecureSession
from privacy import he

Phase = SecureSession.Phase


def _he_session(site: Datasite, study_id: str, number: int) -> SecureSession:
    session = session_for(site, study_id, number)
    if session.mode != "he":
        raise Conflict(f"round {number} is not an he session")
    return session


def setup(site: Datasite, study_id: str, number: int) -> dict:
    """``{"setup": ...}`` for a participant (key id, layout, chunking, its progress), or null."""
    session = SecureSession.objects.filter(study_id=study_id, number=number).first()
    if session is None:
        session_for(site, study_id, number)  # raises unless the session is merely not open yet
        return {"setup": None}
    session = _he_session(site, study_id, number)
    key_id, length, chunk_values = he_files.layout(session)
    return {
        "setup": {
            "session_id": session.session_id,
            "mode": "he",
            "round": number,
            "key_id": key_id.hex(),
            "vector_length": length,
            "chunk_values": chunk_values,
            "layout": session.layout,
            "phase": session.phase,
            "deadline": session.phase_deadline.isoformat(),
            "received": he_files.received(session, site.name),
            "committed": site.name in sessions.messages(session, "commit"),
        }
    }


def receive_chunk(site: Datasite, study_id: str, number: int, index: int, blob: bytes) -> None:
    """Validate one encrypted chunk completely and keep it until the contributors are fixed."""
    session = _he_session(site, study_id, number)
    if session.phase != Phase.UPLOAD:
        raise Conflict(f"chunks are not accepted now (phase {session.phase})")
    if site.name in sessions.messages(session, "commit"):
        raise Conflict(f"{site.name} already committed its upload")
    key_id, length, chunk_values = he_files.layout(session)
    if not 0 <= index < he.n_chunks(length, chunk_values):
        raise ServiceError(f"chunk index {index} is out of range")
    try:
        he.check_contribution(
            blob, key_id=key_id, total_values=length, chunk_values=chunk_values, chunk_index=index
        )
    except he.HEError as exc:
        raise ServiceError(f"rejected chunk: {exc}") from exc
    folder = he_files.uploads(session, site.name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{index:06d}.ckks", blob)


def commit(site: Datasite, study_id: str, number: int, data: object) -> None:
    """A site's upload is complete: it joins the sum (with its public round metrics)."""
    session = _he_session(site, study_id, number)
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or len(str(metrics)) > MAX_METRICS_BYTES:
        raise ServiceError("expected {'metrics': {...}} with a small metrics object")
    _, length, chunk_values = he_files.layout(session)
    missing = sorted(
        set(range(he.n_chunks(length, chunk_values))) - set(he_files.received(session, site.name))
    )
    if missing:
        raise Conflict(f"chunks not received yet: {missing[:10]}")
    with transaction.atomic():
        session = locked(session)
        if session.phase != Phase.UPLOAD:
            raise Conflict(f"uploads are closed (phase {session.phase})")
        if SecureMessage.objects.filter(session=session, phase="commit", site=site.name).exists():
            raise Conflict(f"{site.name} already committed its upload")
        sessions.record(session, site, "commit", {"chunks": he.n_chunks(length, chunk_values)})
        rnd = Round.objects.get(study_id=study_id, number=number)
        SiteUpdate.objects.get_or_create(
            round=rnd,
            datasite=site,
            defaults={"local_steps": studies.plan_of(session.study).local_steps, "metrics": metrics},
        )


def aggregate_chunk(site: Datasite, study_id: str, number: int, index: int) -> bytes:
    """One frame of the round's aggregate, for the site asked to decrypt it (and no other)."""
    session = _he_session(site, study_id, number)
    if session.phase != Phase.DECRYPT or not session.decryptors or session.decryptors[-1] != site.name:
        raise Conflict(f"{site.name} is not asked to decrypt round {number}")
    path = he_files.aggregate_path(session, index)
    if not path.is_file():
        raise ServiceError(f"no aggregate chunk {index}")
    return path.read_bytes()
