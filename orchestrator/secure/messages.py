"""Which secure session a site's message is for, and the checks every message passes.

Sites are authenticated per request by their API token (:mod:`orchestrator.secure_api`). A
message for an unknown study is a 404, as is one for the current round of a secure study
whose session is not open yet (the site polls again); one for another round, a finished
study, a failed session or a session the site is not a member of is a conflict (409).
"""

from __future__ import annotations

from common.errors import Conflict, NotFound
from orchestrator import modes
from orchestrator.models import Datasite, Study
from orchestrator.secure_models import SecureSession

MAX_METRICS_BYTES = 16 * 1024


def session_for(site: Datasite, study_id: str, number: int) -> SecureSession:
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        raise NotFound(f"no study {study_id}")
    if study.status not in Study.ACTIVE:
        raise Conflict(f"the study is {study.status}")
    session = SecureSession.objects.filter(study=study, number=number).first()
    if session is None:
        current = number == study.current_round if number else study.status == Study.Status.PREPARING
        if current and modes.of(study).secure:
            raise NotFound(f"the secure session of round {number} is not open yet")
        raise Conflict(f"round {number} has no secure session in this study")
    if session.phase == SecureSession.Phase.FAILED:
        raise Conflict(f"the secure session of round {number} failed: {session.error}")
    if site.name not in session.params["sites"]:
        raise Conflict(f"{site.name} is not a participant of round {number}")
    return session


def locked(session: SecureSession) -> SecureSession:
    """The session's row, locked until the end of the caller's transaction."""
    return SecureSession.objects.select_for_update().get(pk=session.pk)
