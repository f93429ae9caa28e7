"""The ``he`` mode's study key at a datasite: the key ceremony and the key it leaves here.

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
"""

from __future__ import annotations

import base64
from pathlib import Path

from django.conf import settings
from django.db import transaction

from audit import trail
from common.errors import Conflict, Forbidden, ServiceError
from common.files import atomic_write
from common.node import load_node
from datasite.models import CodeRequest, HEKey
from datasite.studies import approved_request, plan_of
from privacy import he


def approved_he(study: str) -> CodeRequest:
    request = approved_request(study)
    if plan_of(request).aggregation != "he":
        raise Forbidden("this study does not aggregate with homomorphic encryption")
    return request


def _node():
    node = load_node(settings.NODE_DIR, settings.FEDSILO_SIGNING_KEY_FILE)
    if node is None:
        raise ServiceError("the he mode needs the node folder's long-term keys")
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
        raise Conflict(f"this site holds no CKKS key for study {study}")
    secret = he.SecretContext(path.read_bytes())
    if secret.key_id.hex() != row.key_id:
        raise ServiceError(f"the stored CKKS key of study {study} does not match its record")
    return secret


def _pinned_key(request: CodeRequest, site: str) -> bytes:
    key = (request.site_keys or {}).get(site)
    if site not in request.sites or not key:
        raise Forbidden(f"{site!r} has no signing key in the approved request")
    return base64.b64decode(key)


def key_statement(study: str) -> dict:
    """Step 1: this site's signed X25519 key for the study's key ceremony."""
    approved_he(study)
    node = _node()
    return he.sign_recipient_key(study, settings.NODE_NAME, node.kex_key().public_key(), node.signing_key())


def make_key(study: str, statements: object) -> dict:
    """Step 2 (the key holder): verify every recipient's statement, make or reuse the key, seal it."""
    request = approved_he(study)
    me = settings.NODE_NAME
    if not isinstance(statements, dict) or not statements:
        raise ServiceError("expected {'recipients': {site: signed key statement}}")
    strangers = sorted(set(statements) - (set(request.sites) - {me}))
    if strangers:
        raise Forbidden(f"recipients outside the approved study (or this site): {strangers}")
    recipients = {}
    for site, statement in sorted(statements.items()):
        try:
            recipients[site] = he.verify_recipient_key(
                statement, study_id=study, site=site, signer_public_key=_pinned_key(request, site)
            )
        except he.HEError as exc:
            raise Forbidden(str(exc)) from exc
    node = _node()
    with transaction.atomic():
        row = HEKey.objects.select_for_update().filter(study=study).first()
        if row is not None and row.key_holder != me:
            raise Conflict(f"this site already holds {row.key_holder}'s key for study {study}")
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
    request = approved_he(study)
    try:
        key_holder = body["key_holder"]
        key_id = bytes.fromhex(body["key_id"])
        envelope = base64.b64decode(body["envelope"], validate=True)
    except (TypeError, KeyError, ValueError) as exc:
        raise ServiceError("expected {'key_holder', 'key_id' (hex), 'envelope' (base64)}") from exc
    if key_holder == settings.NODE_NAME:
        raise ServiceError("this site is the key holder; it keeps its own key")
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
        raise Forbidden(f"key envelope refused: {exc}") from exc
    with transaction.atomic():
        row = HEKey.objects.select_for_update().filter(study=study).first()
        if row is not None:
            if row.key_id != key_id.hex():
                raise Conflict(f"this site already holds another CKKS key for study {study}")
            return {"key_id": row.key_id}
        _store(study, secret, key_holder)
    return {"key_id": key_id.hex()}
