"""Secure-aggregation messages from datasites (``/api/secure/...``): one endpoint per phase.

``secagg`` sessions: setup, advert(s), shares, masked, unmask
(:mod:`orchestrator.secure.secagg_messages`); ``he`` sessions: he/setup, he/chunks/{i},
he/commit, he/aggregate/{i} (:mod:`orchestrator.secure.he_messages`).

Round 0 is the study's normalization-statistics session. Every endpoint needs a member
datasite's token; see :mod:`orchestrator.modes.secagg` and :mod:`orchestrator.modes.he` for
the protocols, :mod:`orchestrator.secure.messages` for the checks. A refusal is a
``ServiceError``, answered by the API's handler with its status.
Status codes: 400 malformed, 403 another site's message or a bad signature, 404 unknown
study, 409 wrong round/session, out of phase, duplicate or not a participant, 413 oversize.
GET endpoints answer 200 with a null field while the phase they wait for is not reached.
"""

import json

from django.http import HttpRequest, HttpResponse
from ninja import Router, Status
from ninja.errors import HttpError

from common.api import require_role
from common.roles import PEER_NODE
from orchestrator.secure import he_files, he_messages, secagg_messages

router = Router(tags=["secure aggregation"])
BASE = "/studies/{study_id}/rounds/{round_number}"
MAX_JSON_BYTES = 8 * 1024 * 1024


def _site(request: HttpRequest):
    require_role(request, PEER_NODE)
    site = getattr(request.user, "datasite", None)
    if site is None:
        raise HttpError(403, "only a member datasite takes part in secure aggregation")
    return site


def _json(request: HttpRequest):
    if int(request.META.get("CONTENT_LENGTH") or 0) > MAX_JSON_BYTES:
        raise HttpError(413, "message too large")
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, "the body must be JSON") from exc


@router.get(BASE + "/setup", response=dict)
def setup(request: HttpRequest, study_id: str, round_number: int):
    """Session id, parameters, layout, the members' signing keys and the caller's progress
    (``{"setup": null}`` while the session is not open yet)."""
    return secagg_messages.setup(_site(request), study_id, round_number)


@router.post(BASE + "/advert", response={201: dict})
def advert(request: HttpRequest, study_id: str, round_number: int):
    """Phase 1: a signed KeyAdvert (JSON)."""
    site = _site(request)
    secagg_messages.receive_advert(site, study_id, round_number, _json(request))
    return Status(201, {"received": "advert"})


@router.get(BASE + "/adverts", response=dict)
def adverts(request: HttpRequest, study_id: str, round_number: int):
    """Every advert once phase 1 is closed (``adverts`` is null before)."""
    return secagg_messages.adverts(_site(request), study_id, round_number)


@router.post(BASE + "/shares", response={201: dict})
def shares(request: HttpRequest, study_id: str, round_number: int):
    """Phase 2: ``{"shares": [EncryptedShare, ...]}``, one per other advertised site."""
    site = _site(request)
    secagg_messages.receive_shares(site, study_id, round_number, _json(request))
    return Status(201, {"received": "shares"})


@router.get(BASE + "/shares", response=dict)
def routed_shares(request: HttpRequest, study_id: str, round_number: int):
    """The shares addressed to the caller once phase 2 is closed."""
    return secagg_messages.shares_for(_site(request), study_id, round_number)


@router.post(BASE + "/masked", response={201: dict})
def masked(request: HttpRequest, study_id: str, round_number: int):
    """Phase 3: the MaskedInput blob (``MaskedInput.to_bytes``: JSON header + raw uint32 LE)."""
    site = _site(request)
    if int(request.META.get("CONTENT_LENGTH") or 0) > secagg_messages.masked_limit(study_id, round_number):
        raise HttpError(413, "the masked input is larger than the session's vector")
    secagg_messages.receive_masked(site, study_id, round_number, request.body)
    return Status(201, {"received": "masked"})


@router.get(BASE + "/unmask", response=dict)
def unmask_request(request: HttpRequest, study_id: str, round_number: int):
    """The UnmaskRequest (survivors and dropped sites) once phase 3 is closed."""
    return secagg_messages.unmask_request(_site(request), study_id, round_number)


@router.post(BASE + "/unmask", response={201: dict})
def unmask(request: HttpRequest, study_id: str, round_number: int):
    """Phase 4: ``{"response": UnmaskResponse, "metrics": {...public round metrics}}``."""
    site = _site(request)
    secagg_messages.receive_unmask(site, study_id, round_number, _json(request))
    return Status(201, {"received": "unmask"})


routers = [("/secure", router)]


# ----------------------------------------------------------------------------- he mode


@router.get(BASE + "/he/setup", response=dict)
def he_setup(request: HttpRequest, study_id: str, round_number: int):
    """Key id, layout, chunking and the caller's progress (``{"setup": null}`` until the round opens)."""
    return he_messages.setup(_site(request), study_id, round_number)


@router.post(BASE + "/he/chunks/{index}", response={201: dict})
def he_chunk(request: HttpRequest, study_id: str, round_number: int, index: int):
    """One encrypted chunk (a ``privacy.he`` contribution frame, application/octet-stream)."""
    site = _site(request)
    if int(request.META.get("CONTENT_LENGTH") or 0) > he_files.chunk_limit(study_id, round_number):
        raise HttpError(413, "the chunk is larger than the session's chunk size allows")
    he_messages.receive_chunk(site, study_id, round_number, index, request.body)
    return Status(201, {"received": index})


@router.post(BASE + "/he/commit", response={201: dict})
def he_commit(request: HttpRequest, study_id: str, round_number: int):
    """``{"metrics": {...}}`` once every chunk is uploaded: the caller's update joins the sum."""
    site = _site(request)
    he_messages.commit(site, study_id, round_number, _json(request))
    return Status(201, {"received": "commit"})


@router.get(BASE + "/he/aggregate/{index}")
def he_aggregate(request: HttpRequest, study_id: str, round_number: int, index: int):
    """One frame of the round's aggregate ciphertext, for the site asked to decrypt it only."""
    blob = he_messages.aggregate_chunk(_site(request), study_id, round_number, index)
    return HttpResponse(blob, content_type="application/octet-stream")
