"""Secure-aggregation endpoints of a datasite (``/api/secure/...``), called by the orchestrator:
the secagg statistics session, and the he key ceremony and decryption (:mod:`datasite.he_rounds`)."""

import json

from django.http import HttpRequest, HttpResponse
from ninja import Router, Status
from ninja.errors import HttpError

from common.api import require_role
from common.roles import PEER_NODE
from datasite import he_rounds, secure_rounds, services

router = Router(tags=["secure aggregation"])
MAX_JSON_BYTES = 4 * 1024 * 1024


@router.post("/studies/{study}/stats", response={202: dict})
def start_stats(request: HttpRequest, study: str):
    """Start this site's part of the secure statistics sum; answers the moments' layout only."""
    require_role(request, PEER_NODE)
    return Status(202, _call(secure_rounds.start_stats, study))


def _call(fn, *args):
    try:
        return fn(*args)
    except services.ServiceError as exc:
        raise HttpError(exc.status, str(exc)) from exc


def _json(request: HttpRequest) -> object:
    if len(request.body) > MAX_JSON_BYTES:
        raise HttpError(413, "message too large")
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, "the body must be JSON") from exc


@router.post("/studies/{study}/he/statement", response=dict)
def he_statement(request: HttpRequest, study: str):
    """he key ceremony, step 1: this site's X25519 key for the study, signed with its Ed25519 key."""
    require_role(request, PEER_NODE)
    return _call(he_rounds.key_statement, study)


@router.post("/studies/{study}/he/ceremony", response=dict)
def he_ceremony(request: HttpRequest, study: str):
    """he key ceremony, step 2 (key holder): ``{"recipients": {site: statement}}`` -> sealed envelopes."""
    require_role(request, PEER_NODE)
    body = _json(request)
    return _call(he_rounds.make_key, study, body.get("recipients") if isinstance(body, dict) else None)


@router.post("/studies/{study}/he/key", response=dict)
def he_key(request: HttpRequest, study: str):
    """he key ceremony, step 3: ``{"key_holder", "key_id", "envelope"}``; opened and kept here."""
    require_role(request, PEER_NODE)
    return _call(he_rounds.receive_key, study, _json(request))


@router.post("/studies/{study}/rounds/{number}/he/decrypt")
def he_decrypt(request: HttpRequest, study: str, number: int):
    """Decrypt a round's aggregate (fetched from the orchestrator); answers safetensors {"sum"}."""
    require_role(request, PEER_NODE)
    blob = _call(he_rounds.decrypt, study, number, _json(request))
    return HttpResponse(blob, content_type="application/octet-stream")
