"""The ``he`` aggregation mode at a datasite: key ceremony, encrypted uploads, decrypting the sum.

Key ceremony (once per study, driven by the orchestrator, after the secure statistics):

1. :func:`key_statement`: every site but the key holder signs the X25519 key the study's CKKS
   key must be sealed to, with its long-term Ed25519 key.
2. :func:`make_key`: the key holder checks each statement against the signing keys pinned in
   the request its data owner approved, makes the key (:func:`privacy.he.create_key_ceremony`)
   and answers one sealed envelope per site; the orchestrator relays them and cannot read them.
3. :func:`receive_key`: each site opens its envelope (signature checked against the key holder's
   pinned key) and keeps the key.

The key is a 0600 file in the node's ``keys/he/`` folder (like the node's own keys) and an
:class:`~datasite.models.HEKey` row. A second ceremony for the same study is refused, unless it
is the same key holder asking again (a retry), which reseals the same key.

Rounds: after local training, :func:`upload` encodes the update as in ``secagg`` mode
(:class:`privacy.secure_vector.UpdateEncoding`: pre-weighted, clipped to the plan's range),
encrypts it chunk by chunk with the study key and uploads the chunks, then commits. A restarted
site resumes: the orchestrator says which chunks it already holds. :func:`decrypt` serves the
orchestrator's request to decrypt a round's aggregate: it fetches the aggregate frames one by
one, refuses single-site or mislabelled aggregates, decrypts with noise flooding and answers
the sum only, at most one aggregate per round (a retry of the same aggregate gets the same sum).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path

import httpx
import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from safetensors.numpy import load, save

from audit import trail
from common.files import atomic_write
from common.node import load_node
from datasite import services
from datasite.models import CodeRequest, HEDecryption, HEKey, RoundRun
from datasite.secure_rounds import (
    PHASE_SECONDS,
    OrchestratorCalls,
    SecureAbort,
    send,
    wait_for,
)
from privacy import he
from privacy.secure_vector import EncodingError, UpdateEncoding, layout_from, layout_to_json

log = logging.getLogger(__name__)
_UNSHARED_METRICS = ("frames_used", "episodes_used")  # the weight is inside the encrypted sum


# ----------------------------------------------------------------------------- the study key


def _approved_he(study: str) -> CodeRequest:
    request = services.approved_request(study)
    if services.plan_of(request).aggregation != "he":
        raise services.Forbidden("this study does not aggregate with homomorphic encryption")
    return request


def _node():
    node = load_node(settings.NODE_DIR)
    if node is None:
        raise services.ServiceError("the he mode needs the node folder's long-term keys")
    return node


def _key_path(study: str) -> Path:
    return _node().dir / "keys" / "he" / f"{study}.ckks"


def _store(study: str, secret: he.SecretContext, key_holder: str) -> None:
    path = _key_path(study)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(path, secret.data, private=True)
    HEKey.objects.create(study=study, key_id=secret.key_id.hex(), key_holder=key_holder)
    trail.record(
        "he.key_stored",
        trail.SYSTEM,
        f"study:{study}",
        {"key_id": secret.key_id.hex(), "key_holder": key_holder},
    )


def study_key(study: str) -> he.SecretContext:
    """This site's copy of the study's CKKS key; ``ServiceError`` when it has none."""
    row = HEKey.objects.filter(study=study).first()
    path = _key_path(study)
    if row is None or not path.exists():
        raise services.Conflict(f"this site holds no CKKS key for study {study}")
    secret = he.SecretContext(path.read_bytes())
    if secret.key_id.hex() != row.key_id:
        raise services.ServiceError(f"the stored CKKS key of study {study} does not match its record")
    return secret


def _pinned_key(request: CodeRequest, site: str) -> bytes:
    key = (request.site_keys or {}).get(site)
    if site not in request.sites or not key:
        raise services.Forbidden(f"{site!r} has no signing key in the approved request")
    return base64.b64decode(key)


def key_statement(study: str) -> dict:
    """Step 1: this site's signed X25519 key for the study's key ceremony."""
    _approved_he(study)
    node = _node()
    return he.sign_recipient_key(study, settings.NODE_NAME, node.kex_key().public_key(), node.signing_key())


def make_key(study: str, statements: object) -> dict:
    """Step 2 (the key holder): verify every recipient's statement, make or reuse the key, seal it."""
    request = _approved_he(study)
    me = settings.NODE_NAME
    if not isinstance(statements, dict) or not statements:
        raise services.ServiceError("expected {'recipients': {site: signed key statement}}")
    strangers = sorted(set(statements) - (set(request.sites) - {me}))
    if strangers:
        raise services.Forbidden(f"recipients outside the approved study (or this site): {strangers}")
    recipients = {}
    for site, statement in sorted(statements.items()):
        try:
            recipients[site] = he.verify_recipient_key(
                statement, study_id=study, site=site, signer_public_key=_pinned_key(request, site)
            )
        except he.HEError as exc:
            raise services.Forbidden(str(exc)) from exc
    node = _node()
    with transaction.atomic():
        row = HEKey.objects.select_for_update().filter(study=study).first()
        if row is not None and row.key_holder != me:
            raise services.Conflict(f"this site already holds {row.key_holder}'s key for study {study}")
        if row is None:
            ceremony, secret = he.create_key_ceremony(study, me, node.signing_key(), recipients)
            _store(study, secret, me)
        else:  # a retry: reseal the same key
            secret = study_key(study)
            envelopes = {
                site: he.seal_secret_context(
                    secret,
                    study_id=study,
                    sender=me,
                    recipient=site,
                    recipient_public_key=pk,
                    signing_key=node.signing_key(),
                )
                for site, pk in recipients.items()
            }
            ceremony = he.KeyCeremony(study, me, secret.key_id, secret.public_bytes(), envelopes)
        trail.record(
            "he.key_sealed",
            trail.SYSTEM,
            f"study:{study}",
            {"key_id": ceremony.key_id.hex(), "recipients": sorted(recipients)},
        )
    return {
        "key_holder": me,
        "key_id": ceremony.key_id.hex(),
        "public_context": base64.b64encode(ceremony.public_context).decode(),
        "envelopes": {s: base64.b64encode(e).decode() for s, e in ceremony.envelopes.items()},
    }


def receive_key(study: str, body: object) -> dict:
    """Step 3: open the key holder's envelope; idempotent for the same key."""
    request = _approved_he(study)
    try:
        key_holder = body["key_holder"]
        key_id = bytes.fromhex(body["key_id"])
        envelope = base64.b64decode(body["envelope"], validate=True)
    except (TypeError, KeyError, ValueError) as exc:
        raise services.ServiceError("expected {'key_holder', 'key_id' (hex), 'envelope' (base64)}") from exc
    if key_holder == settings.NODE_NAME:
        raise services.ServiceError("this site is the key holder; it keeps its own key")
    try:
        secret = he.open_secret_context(
            envelope,
            study_id=study,
            sender=key_holder,
            recipient=settings.NODE_NAME,
            recipient_private_key=_node().kex_key(),
            sender_public_key=_pinned_key(request, key_holder),
            key_id=key_id,
        )
    except he.HEError as exc:
        raise services.Forbidden(f"key envelope refused: {exc}") from exc
    with transaction.atomic():
        row = HEKey.objects.select_for_update().filter(study=study).first()
        if row is not None:
            if row.key_id != key_id.hex():
                raise services.Conflict(f"this site already holds another CKKS key for study {study}")
            return {"key_id": row.key_id}
        _store(study, secret, key_holder)
    return {"key_id": key_id.hex()}


# ----------------------------------------------------------------------------- a round's upload


def upload(run: RoundRun) -> dict:
    """Encrypt a finished round's update chunk by chunk, upload the chunks and commit
    (run through :func:`datasite.secure_rounds.contribute`); raises ``SecureAbort``."""
    plan = services.plan_of(run.request)
    until = time.monotonic() + plan.round_timeout_s + 3 * PHASE_SECONDS
    api = OrchestratorCalls(run.study, run.round)
    try:
        setup = wait_for(api, "/he/setup", "setup", until)
        if setup.get("committed"):
            return {"chunks": 0, "resumed": True}
        try:
            secret = study_key(run.study)
        except services.ServiceError as exc:
            raise SecureAbort(str(exc)) from exc
        update = load((services.round_dir(run.study, run.round) / "update.safetensors").read_bytes())
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
            he.encrypt_stream(secret, vector, weight=1.0, chunk_values=chunk_values, chunk_indices=missing),
            strict=True,
        ):
            send(
                api,
                f"/he/chunks/{index}",
                until,
                content=frame,
                headers={"Content-Type": "application/octet-stream"},
            )
        metrics = {
            k: v for k, v in services._public_metrics(run.metrics).items() if k not in _UNSHARED_METRICS
        }
        send(api, "/he/commit", until, json={"metrics": metrics})
        return {"chunks": len(missing), "clipped_values": clipped, "resumed": bool(received)}
    except (he.HEError, EncodingError, ValueError, KeyError, TypeError) as exc:
        raise SecureAbort(f"{exc.__class__.__name__}: {exc}") from exc
    finally:
        api.close()


# ----------------------------------------------------------------------------- decrypting the sum


def decrypt(study: str, number: int, body: object) -> bytes:
    """Decrypt round ``number``'s aggregate, fetched frame by frame; safetensors {"sum": float64}."""
    request = _approved_he(study)
    try:
        total = int(body["total_values"])
        n = int(body["n_chunks"])
        contributors = sorted(str(s) for s in body["contributors"])
    except (TypeError, KeyError, ValueError) as exc:
        raise services.ServiceError("expected {'total_values', 'n_chunks', 'contributors'}") from exc
    if not 1 <= n <= total or len(contributors) < 2 or not set(contributors) <= set(request.sites):
        raise services.ServiceError("an aggregate of at least 2 of the study's sites is needed")
    secret = study_key(study)
    link = services._orchestrator()
    digest = hashlib.sha256()
    frames = []
    with httpx.Client(
        base_url=f"{link.url}/api/secure/studies/{study}/rounds/{number}/he",
        headers={"Authorization": f"Bearer {link.token}"},
        timeout=300,
    ) as http:

        def fetch():
            for index in range(n):
                try:
                    response = http.get(f"/aggregate/{index}")
                except httpx.HTTPError as exc:
                    raise services.ServiceError(f"aggregate chunk {index} not fetched: {exc}") from exc
                if response.status_code != 200:
                    raise services.ServiceError(f"aggregate chunk {index}: HTTP {response.status_code}")
                header = he.read_chunk_header(response.content)
                if header.contributors != len(contributors):
                    raise services.ServiceError(
                        f"aggregate chunk {index} sums {header.contributors} sites, not {len(contributors)}"
                    )
                digest.update(hashlib.sha256(response.content).digest())
                frames.append(index)
                yield response.content

        try:
            summed = he.decrypt_stream(secret, fetch(), total, min_contributors=2)
        except he.HEError as exc:
            raise services.ServiceError(f"aggregate refused: {exc}") from exc
    try:
        with transaction.atomic():
            row, created = HEDecryption.objects.get_or_create(
                study=study,
                round=number,
                defaults={"aggregate_sha256": digest.hexdigest(), "contributors": contributors},
            )
    except IntegrityError as exc:  # a concurrent call recorded first
        raise services.Conflict("this round's aggregate is being decrypted already") from exc
    if row.aggregate_sha256 != digest.hexdigest():
        raise services.Conflict(f"this site already decrypted another aggregate of round {number}")
    if created:
        trail.record(
            "he.decrypted",
            trail.SYSTEM,
            f"study:{study}",
            {"round": number, "contributors": contributors, "values": total},
        )
    return save({"sum": summed})
