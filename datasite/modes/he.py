"""The ``he`` aggregation mode at a datasite: encrypted uploads, decrypting the sum, its endpoints.

The study's CKKS key comes from the key ceremony (:mod:`datasite.modes.he_keys`); the
statistics are pooled through the secure sum as in ``secagg`` mode (:class:`HEMode` extends
:class:`~datasite.modes.secagg.SecAggMode`).

Rounds: after local training, :meth:`HEMode.contribute_update` encodes the update as in
``secagg`` mode (:class:`privacy.secure_vector.UpdateEncoding`: pre-weighted, clipped to the
plan's range), encrypts it chunk by chunk with the study key and uploads the chunks, then
commits. A restarted site resumes: the orchestrator says which chunks it already holds.
:func:`decrypt` serves the orchestrator's request to decrypt a round's aggregate: it fetches
the aggregate frames one by one, refuses single-site or mislabelled aggregates, decrypts with
noise flooding and answers the sum only, at most one aggregate per round (a retry of the same
aggregate gets the same sum).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from ninja import Router
from safetensors.numpy import load, save

from audit import trail
from common.api import require_role
from common.errors import Conflict, ServiceError, TooLarge
from common.roles import PEER_NODE
from datasite.models import HEDecryption, RoundRun
from datasite.modes.he_keys import approved_he, key_statement, make_key, receive_key, study_key
from datasite.modes.secagg import SecAggMode
from datasite.modes.secure import SecureAbort, deadline, send, session_client, shared_metrics, wait_for
from datasite.orchestrator_client import OrchestratorClient, OrchestratorError
from datasite.results import stored_update
from datasite.studies import plan_of
from privacy import he
from privacy.secure_vector import EncodingError, UpdateEncoding, layout_from, layout_to_json

log = logging.getLogger(__name__)
MAX_JSON_BYTES = 4 * 1024 * 1024
router = Router(tags=["he mode"])


class HEMode(SecAggMode):
    name = "he"
    description = (
        "homomorphic encryption (CKKS): the orchestrator sees ciphertexts and the sum; "
        "every participating site holds the decryption key"
    )
    router = router

    def contribute_update(self, run: RoundRun) -> dict:
        """Encrypt a finished round's update chunk by chunk, upload the chunks and commit;
        raises ``SecureAbort``."""
        plan = plan_of(run.request)
        until = deadline(plan)
        api = session_client(run.study, run.round)
        try:
            setup = wait_for(api, "/he/setup", "setup", until)
            if setup.get("committed"):
                return {"chunks": 0, "resumed": True}
            try:
                secret = study_key(run.study)
            except ServiceError as exc:
                raise SecureAbort(str(exc)) from exc
            update = load(stored_update(run))
            enc = UpdateEncoding(
                layout_from(update), plan.strategy, plan.secure.clip, plan.secure.max_weight, plan.local_steps
            )
            layout = setup.get("layout") or {}
            expected = {
                "manifest": layout_to_json(enc.layout),
                "strategy": enc.strategy,
                "max_weight": enc.max_weight,
                "max_steps": enc.max_steps,
                "scalars": list(enc.scalars),
            }
            if layout != expected or setup.get("vector_length") != enc.length:
                raise SecureAbort("the session's layout differs from this site's update and approved plan")
            if setup.get("key_id") != secret.key_id.hex():
                raise SecureAbort("the session names another CKKS key than this study's")
            vector, clipped = enc.encode(update, run.num_examples, plan.local_steps)
            del update
            np.clip(vector, -enc.clip, enc.clip, out=vector)
            received = set(setup.get("received") or [])
            chunk_values = int(setup["chunk_values"])
            missing = [i for i in range(he.n_chunks(enc.length, chunk_values)) if i not in received]
            for index, frame in zip(
                missing,
                he.encrypt_stream(
                    secret, vector, weight=1.0, chunk_values=chunk_values, chunk_indices=missing
                ),
                strict=True,
            ):
                send(
                    api,
                    f"/he/chunks/{index}",
                    until,
                    content=frame,
                    headers={"Content-Type": "application/octet-stream"},
                )
            send(api, "/he/commit", until, json={"metrics": shared_metrics(run)})
            return {"chunks": len(missing), "clipped_values": clipped, "resumed": bool(received)}
        except (he.HEError, EncodingError, ValueError, KeyError, TypeError) as exc:
            raise SecureAbort(f"{exc.__class__.__name__}: {exc}") from exc
        finally:
            api.close()


def decrypt(study: str, number: int, body: object) -> bytes:
    """Decrypt round ``number``'s aggregate, fetched frame by frame; safetensors {"sum": float64}."""
    request = approved_he(study)
    try:
        total = int(body["total_values"])
        n = int(body["n_chunks"])
        contributors = sorted(str(s) for s in body["contributors"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ServiceError("expected {'total_values', 'n_chunks', 'contributors'}") from exc
    if not 1 <= n <= total or len(contributors) < 2 or not set(contributors) <= set(request.sites):
        raise ServiceError("an aggregate of at least 2 of the study's sites is needed")
    secret = study_key(study)
    digest = hashlib.sha256()
    with OrchestratorClient.joined(f"/api/secure/studies/{study}/rounds/{number}/he") as api:

        def fetch():
            for index in range(n):
                try:
                    frame = api.get(f"/aggregate/{index}").content
                except OrchestratorError as exc:
                    raise ServiceError(f"aggregate chunk {index} not fetched: {exc}") from exc
                header = he.read_chunk_header(frame)
                if header.contributors != len(contributors):
                    raise ServiceError(
                        f"aggregate chunk {index} sums {header.contributors} sites, not {len(contributors)}"
                    )
                digest.update(hashlib.sha256(frame).digest())
                yield frame

        try:
            summed = he.decrypt_stream(secret, fetch(), total, min_contributors=2)
        except he.HEError as exc:
            raise ServiceError(f"aggregate refused: {exc}") from exc
    try:
        with transaction.atomic():
            row, created = HEDecryption.objects.get_or_create(
                study=study,
                round=number,
                defaults={"aggregate_sha256": digest.hexdigest(), "contributors": contributors},
            )
    except IntegrityError as exc:  # a concurrent call recorded first
        raise Conflict("this round's aggregate is being decrypted already") from exc
    if row.aggregate_sha256 != digest.hexdigest():
        raise Conflict(f"this site already decrypted another aggregate of round {number}")
    if created:
        trail.record(
            "he.decrypted",
            trail.SYSTEM,
            f"study:{study}",
            {"round": number, "contributors": contributors, "values": total},
        )
    return save({"sum": summed})


# ----------------------------------------------------------------------------- endpoints


def _json(request: HttpRequest) -> object:
    if len(request.body) > MAX_JSON_BYTES:
        raise TooLarge("message too large")
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceError("the body must be JSON") from exc


@router.post("/studies/{study}/he/statement", response=dict)
def he_statement(request: HttpRequest, study: str):
    """he key ceremony, step 1: this site's X25519 key for the study, signed with its Ed25519 key."""
    require_role(request, PEER_NODE)
    return key_statement(study)


@router.post("/studies/{study}/he/ceremony", response=dict)
def he_ceremony(request: HttpRequest, study: str):
    """he key ceremony, step 2 (key holder): ``{"recipients": {site: statement}}`` -> sealed envelopes."""
    require_role(request, PEER_NODE)
    body = _json(request)
    return make_key(study, body.get("recipients") if isinstance(body, dict) else None)


@router.post("/studies/{study}/he/key", response=dict)
def he_key(request: HttpRequest, study: str):
    """he key ceremony, step 3: ``{"key_holder", "key_id", "envelope"}``; opened and kept here."""
    require_role(request, PEER_NODE)
    return receive_key(study, _json(request))


@router.post("/studies/{study}/rounds/{number}/he/decrypt")
def he_decrypt(request: HttpRequest, study: str, number: int):
    """Decrypt a round's aggregate (fetched from the orchestrator); answers safetensors {"sum"}."""
    require_role(request, PEER_NODE)
    return HttpResponse(decrypt(study, number, _json(request)), content_type="application/octet-stream")
