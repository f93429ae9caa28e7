"""The ``he`` mode at the orchestrator: key ceremony, encrypted uploads, the sum.

Preparation (after the statistics, which go through a ``secagg`` session as in that mode:
CKKS is approximate and moment sums have no public range), :meth:`HEMode.prepare_keys` runs
the key ceremony of :mod:`datasite.modes.he_keys` once per study: it collects every other
approved site's signed X25519 key statement, asks the first approved site (by name) to make
the CKKS key and seal it to them, and relays each sealed envelope. It keeps the key id and,
until delivered, the envelopes (:class:`~orchestrator.secure_models.StudyKey`); it never
holds the key.

A training round is a :class:`~orchestrator.secure_models.SecureSession` in mode ``he``:

1. ``upload``: each participant posts its encrypted update chunk by chunk
   (:func:`orchestrator.secure.he_messages.receive_chunk`: fully validated against the
   study's key id, the vector layout and the index, then kept as a file, since ciphertexts
   are useless without the key) and commits (``he_messages.commit``, with its public
   metrics) once every chunk is in. A site that restarts resumes its upload (``setup`` lists
   the chunks already held). The phase closes when every participant committed or refused,
   or at the round deadline.
2. ``decrypt``: at least two sites (and the plan's ``min_sites``) must have committed. The
   engine sums the committed sites' chunks chunk by chunk
   (:func:`privacy.he.sum_stored_contributions`, in ``FEDSILO_HE_SUM_WORKERS`` processes;
   memory: one chunk per process), deletes the individual chunks, and asks one key-holding
   site (a contributor first) to decrypt: that site fetches the aggregate frames (only
   aggregates are ever served, and only to the site asked) and answers the flooded sum. If it
   fails, the next key holder is asked. The sum is decoded and applied as in ``secagg`` mode
   (:meth:`orchestrator.modes.secagg.SecAggMode.close`).

Trust (see :mod:`privacy.he`): TenSEAL has no threshold decryption, so every participating
datasite holds the whole key. The orchestrator must not collude with any of them and must not
pass one site's ciphertext off as an aggregate; against a malicious orchestrator use ``secagg``.
"""

from __future__ import annotations

import base64
import logging
import math
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from safetensors import SafetensorError
from safetensors.numpy import load

from audit import trail
from common.errors import ServiceError
from common.files import atomic_write
from common.protocol import Plan
from orchestrator import studies
from orchestrator.models import Datasite, Round, Study, StudySite
from orchestrator.modes.secagg import SecAggMode, SecureSum
from orchestrator.secure import he_files, sessions
from orchestrator.secure.sessions import fail_session, gone_sites, messages, move
from orchestrator.secure_models import SecureSession, StudyKey
from orchestrator.sites import SiteClient, SiteUnreachable
from privacy import he
from privacy.secure_vector import layout_to_json

log = logging.getLogger(__name__)
Phase = SecureSession.Phase


class HEMode(SecAggMode):
    """The ``secagg`` statistics and closing, with a key ceremony and encrypted rounds."""

    name = "he"

    def check_proposal(self, plan: Plan, n_sites: int) -> None:
        super().check_proposal(plan, n_sites)
        per_round = min(n_sites, max(plan.min_sites, math.ceil(plan.fraction * n_sites)))
        if n_sites > he.MAX_CONTRIBUTIONS:
            raise ServiceError(f"the he mode sums at most {he.MAX_CONTRIBUTIONS} sites per round")
        if plan.secure.clip > he.MAX_ABS_VALUE:
            raise ServiceError(
                f"secure.clip {plan.secure.clip:g} exceeds the he mode's safe value bound "
                f"{he.MAX_ABS_VALUE:g}"
            )
        if max(2, plan.min_sites) > per_round:
            raise ServiceError(
                "the he mode decrypts only sums of at least 2 sites: select 2 or more per round"
            )

    def prepare_keys(self, study: Study) -> bool:
        """One step of the study's key ceremony; True once every approved site holds the key."""
        return _ceremony(study, studies.approved_sites(study))

    def drive(self, study: Study, rnd: Round) -> SecureSum | None:
        session = SecureSession.objects.filter(study=study, number=rnd.number).first()
        if session is None:
            session = _open(study, rnd)
            if session is None:
                return None
        if session.phase == Phase.UPLOAD:
            if studies.resend_due(rnd):
                studies.send_round(study, rnd)
            if not _close_uploads(study, session):
                return None
        if session.phase == Phase.DECRYPT:
            return _decrypt(study, rnd, session)
        return None


# ----------------------------------------------------------------------------- key ceremony


def _ceremony(study: Study, approved: list[StudySite]) -> bool:
    """One step of the study's key ceremony; True once every approved site holds the key."""
    key = StudyKey.objects.filter(study=study).first()
    if key is not None and key.done:
        return True
    sites = sorted((s.datasite for s in approved), key=lambda d: d.name)
    if key is None:
        studies.update(study, phase="he:key ceremony")
        key = _make_key(study, sites)
        if key is None:
            return False
    for site in sites:
        if site.name == key.key_holder or site.name in key.delivered:
            continue
        body = {"key_holder": key.key_holder, "key_id": key.key_id, "envelope": key.envelopes[site.name]}
        with SiteClient(site) as client:
            try:
                client.he_key(study.pk, body)
            except SiteUnreachable as exc:
                if 400 <= exc.status < 500:
                    studies.fail(study, f"{site.name} refused the study's CKKS key: {exc}")
                else:
                    log.info("CKKS key not delivered to %s yet: %s", site.name, exc)
                return False
        key.delivered = [*key.delivered, site.name]
        key.save(update_fields=["delivered"])
    with transaction.atomic():
        StudyKey.objects.filter(pk=key.pk).update(envelopes={}, done=True)
        trail.record(
            "he.key_delivered",
            trail.SYSTEM,
            f"study:{study.pk}",
            {"key_id": key.key_id, "key_holder": key.key_holder, "recipients": key.delivered},
        )
    return True


def _make_key(study: Study, sites: list[Datasite]) -> StudyKey | None:
    holder, recipients = sites[0], sites[1:]
    statements = {}
    for site in recipients:
        with SiteClient(site) as client:
            try:
                statements[site.name] = client.he_statement(study.pk)
            except SiteUnreachable as exc:
                log.info("key statement of %s not available yet: %s", site.name, exc)
                return None
    with SiteClient(holder) as client:
        try:
            answer = client.he_ceremony(study.pk, statements)
        except SiteUnreachable as exc:
            if 400 <= exc.status < 500:
                studies.fail(study, f"the key ceremony failed at {holder.name}: {exc}")
            else:
                log.info("key ceremony at %s not done yet: %s", holder.name, exc)
            return None
    try:
        key_id = bytes.fromhex(answer["key_id"])
        public = base64.b64decode(answer["public_context"], validate=True)
        envelopes = dict(answer["envelopes"])
    except (KeyError, TypeError, ValueError) as exc:
        studies.fail(study, f"malformed key ceremony answer from {holder.name}: {exc}")
        return None
    if (
        answer.get("key_holder") != holder.name
        or len(key_id) != he.KEY_ID_BYTES
        or public != he.public_context_bytes()
        or set(envelopes) != set(statements)
    ):
        studies.fail(study, f"the key ceremony answer of {holder.name} does not match the study")
        return None
    with transaction.atomic():
        key = StudyKey.objects.create(
            study=study, key_holder=holder.name, key_id=key_id.hex(), envelopes=envelopes
        )
        trail.record(
            "he.key_made",
            trail.SYSTEM,
            f"study:{study.pk}",
            {"key_id": key.key_id, "key_holder": holder.name, "recipients": sorted(envelopes)},
        )
    return key


# ----------------------------------------------------------------------------- rounds


def _open(study: Study, rnd: Round) -> SecureSession | None:
    key = StudyKey.objects.filter(study=study, done=True).first()
    if key is None:
        studies.fail(study, "the study has no CKKS key (the key ceremony did not finish)")
        return None
    enc = sessions.update_encoding(study)
    with transaction.atomic():
        session, created = SecureSession.objects.get_or_create(
            study=study,
            number=rnd.number,
            defaults={
                "kind": SecureSession.Kind.UPDATE,
                "mode": HEMode.name,
                "session_id": sessions.session_id(study.pk, rnd.number),
                "params": {
                    "sites": list(rnd.participants),
                    "key_id": key.key_id,
                    "vector_length": enc.length,
                    "chunk_values": he_files.chunk_values(),
                },
                "layout": {
                    "manifest": layout_to_json(enc.layout),
                    "strategy": enc.strategy,
                    "max_weight": enc.max_weight,
                    "max_steps": enc.max_steps,
                    "scalars": list(enc.scalars),
                },
                "phase": Phase.UPLOAD,
                "phase_deadline": rnd.deadline,
            },
        )
        if created:
            trail.record(
                "he.opened",
                trail.SYSTEM,
                f"study:{study.pk}",
                {"round": rnd.number, "sites": list(rnd.participants), "key_id": key.key_id},
            )
    studies.update(study, phase="he:upload")
    return session


def _close_uploads(study: Study, session: SecureSession) -> bool:
    """Fix the contributors, sum their chunks, drop the individual chunks; True when closed."""
    plan = studies.plan_of(study)
    order = {s: i for i, s in enumerate(session.params["sites"])}
    committed = set(messages(session, "commit"))
    expected = set(session.params["sites"]) - gone_sites(session)
    if not (expected <= committed or timezone.now() >= session.phase_deadline):
        return False
    need = max(2, plan.min_sites)
    if len(committed) < need:
        fail_session(session, f"{len(committed)} site(s) committed an encrypted update, {need} needed")
        return False
    survivors = sorted(committed, key=order.get)
    key_id, length, chunk_values = he_files.layout(session)
    folder = he_files.aggregate_path(session, 0).parent
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        [he_files.uploads(session, s) / f"{index:06d}.ckks" for s in survivors]
        for index in range(he.n_chunks(length, chunk_values))
    ]
    try:
        aggregates = he.sum_stored_contributions(
            files,
            key_id=key_id,
            total_values=length,
            chunk_values=chunk_values,
            workers=settings.FEDSILO_HE_SUM_WORKERS,
        )
        for index, aggregate in enumerate(aggregates):
            atomic_write(he_files.aggregate_path(session, index), aggregate)
    except (he.HEError, OSError, BrokenProcessPool) as exc:
        fail_session(session, f"the encrypted sum could not be formed: {exc}")
        return False
    for site in session.params["sites"]:
        for path in he_files.uploads(session, site).glob("*"):
            path.unlink()
    dropped = sorted(set(session.params["sites"]) - committed, key=order.get)
    move(session, Phase.DECRYPT, survivors=survivors, dropped=dropped)
    studies.update(study, phase="he:decrypt")
    return True


def _decrypt(study: Study, rnd: Round, session: SecureSession) -> SecureSum | None:
    """Ask the next key-holding site to decrypt the aggregate; its answer is the round's sum."""
    key = StudyKey.objects.get(study=study)
    holders = [*session.survivors, key.key_holder, *key.delivered]
    candidates = [s for s in dict.fromkeys(holders) if s not in session.decryptors]
    if not candidates:
        fail_session(session, f"no key-holding site decrypted the aggregate (asked: {session.decryptors})")
        return None
    name = candidates[0]
    SecureSession.objects.filter(pk=session.pk).update(decryptors=[*session.decryptors, name])
    session.decryptors = [*session.decryptors, name]
    _, length, chunk_values = he_files.layout(session)
    body = {
        "total_values": length,
        "n_chunks": he.n_chunks(length, chunk_values),
        "contributors": list(session.survivors),
    }
    with SiteClient(Datasite.objects.get(name=name)) as client:
        try:
            blob = client.he_decrypt(study.pk, rnd.number, body)
        except SiteUnreachable as exc:
            log.warning("%s did not decrypt round %s: %s", name, rnd.number, exc)
            trail.record(
                "he.decrypt_failed",
                trail.SYSTEM,
                f"study:{study.pk}",
                {"round": rnd.number, "site": name, "error": str(exc)[:300]},
            )
            return None
    try:
        summed = load(blob)["sum"]
    except (SafetensorError, KeyError, ValueError) as exc:
        log.warning("%s answered a malformed sum: %s", name, exc)
        return None
    if summed.shape != (length,) or summed.dtype != np.float64 or not np.isfinite(summed).all():
        log.warning("%s answered a sum of the wrong shape or with non-finite values", name)
        return None
    trail.record("he.decrypted", trail.SYSTEM, f"study:{study.pk}", {"round": rnd.number, "site": name})
    return SecureSum(
        session,
        summed,
        {"survivors": list(session.survivors), "dropped": list(session.dropped), "decrypted_by": name},
    )
