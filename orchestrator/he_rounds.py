"""The ``he`` aggregation mode at the orchestrator: key ceremony, encrypted uploads, the sum.

Preparation (after the statistics, which go through a ``secagg`` session as in that mode:
CKKS is approximate and moment sums have no public range), :func:`ceremony` runs the key
ceremony of :mod:`datasite.he_rounds` once per study: it collects every other approved site's
signed X25519 key statement, asks the first approved site (by name) to make the CKKS key and
seal it to them, and relays each sealed envelope. It keeps the key id and, until delivered,
the envelopes (:class:`~orchestrator.secure_models.StudyKey`); it never holds the key.

A training round is a :class:`~orchestrator.secure_models.SecureSession` in mode ``he``:

1. ``upload``: each participant posts its encrypted update chunk by chunk
   (:func:`receive_chunk`: fully validated against the study's key id, the vector layout and
   the index, then kept as a file, since ciphertexts are useless without the key) and commits
   (:func:`commit`, with its public metrics) once every chunk is in. A site that restarts
   resumes its upload (``setup`` lists the chunks already held). The phase closes when every
   participant committed or refused, or at the round deadline.
2. ``decrypt``: at least two sites (and the plan's ``min_sites``) must have committed. The
   engine sums the committed sites' chunks chunk by chunk
   (:func:`privacy.he.sum_stored_contributions`, in ``FEDSILO_HE_SUM_WORKERS`` processes,
   default one per core; memory: one chunk per process), deletes the individual chunks, and
   asks one key-holding site (a contributor first) to decrypt: that site fetches the
   aggregate frames (only aggregates are ever served, and only to the site asked) and
   answers the flooded sum. If it fails, the next key holder is asked. The sum is decoded
   and applied as in ``secagg`` mode (:func:`orchestrator.secure_rounds.close_round`).

Trust (see :mod:`privacy.he`): TenSEAL has no threshold decryption, so every participating
datasite holds the whole key. The orchestrator must not collude with any of them and must not
pass one site's ciphertext off as an aggregate; against a malicious orchestrator use ``secagg``.
"""

from __future__ import annotations

import base64
import logging
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from django.db import transaction
from django.utils import timezone
from safetensors import SafetensorError
from safetensors.numpy import load

from audit import trail
from common.files import atomic_write
from common.protocol import Plan
from orchestrator import engine
from orchestrator.models import Datasite, Round, SiteUpdate, Study
from orchestrator.secure_models import SecureMessage, SecureSession, StudyKey
from orchestrator.secure_rounds import (
    MAX_METRICS_BYTES,
    _update_encoding,
    close_round,
    fail_session,
    gone_sites,
    locked,
    messages,
    move,
    record,
    session_folder,
    session_for,
    session_id,
)
from orchestrator.services import Conflict, ServiceError
from orchestrator.sites import SiteClient, SiteUnreachable
from privacy import he
from privacy.secure_vector import layout_to_json

log = logging.getLogger(__name__)
Phase = SecureSession.Phase
CHUNK_VALUES = int(os.environ.get("FEDSILO_HE_CHUNK_VALUES", str(he.DEFAULT_CHUNK_VALUES)))
# processes summing the encrypted chunks when a round's uploads close (chunks are independent)
SUM_WORKERS = int(os.environ.get("FEDSILO_HE_SUM_WORKERS", str(os.cpu_count() or 1)))
_PART_BYTES = 2 * 2 * he.POLY_MODULUS_DEGREE * 8 + 4  # a ciphertext part and its length prefix


def check_he_proposal(plan: Plan, n_sites: int, per_round: int) -> None:
    """Refuse an ``he`` plan that cannot run (after the checks common to secure modes)."""
    if n_sites > he.MAX_CONTRIBUTIONS:
        raise ServiceError(f"the he mode sums at most {he.MAX_CONTRIBUTIONS} sites per round")
    if plan.secure.clip > he.MAX_ABS_VALUE:
        raise ServiceError(
            f"secure.clip {plan.secure.clip:g} exceeds the he mode's safe value bound {he.MAX_ABS_VALUE:g}"
        )
    if max(2, plan.min_sites) > per_round:
        raise ServiceError("the he mode decrypts only sums of at least 2 sites: select 2 or more per round")


# ----------------------------------------------------------------------------- key ceremony


def ceremony(study: Study) -> bool:
    """One step of the study's key ceremony; True once every approved site holds the key."""
    key = StudyKey.objects.filter(study=study).first()
    if key is not None and key.done:
        return True
    sites = sorted((s.datasite for s in engine._approved_sites(study)), key=lambda d: d.name)
    if key is None:
        engine._set(study, phase="he:key ceremony")
        key = _make_key(study, sites)
        if key is None:
            return False
    for site in sites:
        if site.name == key.key_holder or site.name in key.delivered:
            continue
        body = {"key_holder": key.key_holder, "key_id": key.key_id, "envelope": key.envelopes[site.name]}
        with SiteClient(site, timeout=120) as client:
            try:
                client._call("POST", f"/secure/studies/{study.pk}/he/key", json=body)
            except SiteUnreachable as exc:
                if 400 <= exc.status < 500:
                    engine._fail(study, f"{site.name} refused the study's CKKS key: {exc}")
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
        with SiteClient(site, timeout=60) as client:
            try:
                statements[site.name] = client._call(
                    "POST", f"/secure/studies/{study.pk}/he/statement"
                ).json()
            except SiteUnreachable as exc:
                log.info("key statement of %s not available yet: %s", site.name, exc)
                return None
    with SiteClient(holder, timeout=300) as client:
        try:
            answer = client._call(
                "POST", f"/secure/studies/{study.pk}/he/ceremony", json={"recipients": statements}
            ).json()
        except SiteUnreachable as exc:
            if 400 <= exc.status < 500:
                engine._fail(study, f"the key ceremony failed at {holder.name}: {exc}")
            else:
                log.info("key ceremony at %s not done yet: %s", holder.name, exc)
            return None
    try:
        key_id = bytes.fromhex(answer["key_id"])
        public = base64.b64decode(answer["public_context"], validate=True)
        envelopes = dict(answer["envelopes"])
    except (KeyError, TypeError, ValueError) as exc:
        engine._fail(study, f"malformed key ceremony answer from {holder.name}: {exc}")
        return None
    if (
        answer.get("key_holder") != holder.name
        or len(key_id) != he.KEY_ID_BYTES
        or public != he.public_context_bytes()
        or set(envelopes) != set(statements)
    ):
        engine._fail(study, f"the key ceremony answer of {holder.name} does not match the study")
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


# ----------------------------------------------------------------------------- site messages


def _he_session(site: Datasite, study_id: str, number: int) -> SecureSession:
    session = session_for(site, study_id, number)
    if session.mode != "he":
        raise Conflict(f"round {number} is not an he session")
    return session


def _layout(session: SecureSession) -> tuple[bytes, int, int]:
    """(key id, vector length, chunk values) of a session."""
    p = session.params
    return bytes.fromhex(p["key_id"]), int(p["vector_length"]), int(p["chunk_values"])


def _uploads(session: SecureSession, site: str) -> Path:
    return session_folder(session) / "he" / "uploads" / site


def _aggregate_path(session: SecureSession, index: int) -> Path:
    return session_folder(session) / "he" / "aggregate" / f"{index:06d}.ckks"


def _received(session: SecureSession, site: str) -> list[int]:
    folder = _uploads(session, site)
    return sorted(int(p.stem) for p in folder.glob("*.ckks")) if folder.is_dir() else []


def chunk_limit(session_or_none: SecureSession | None) -> int:
    """Largest acceptable chunk body (for the 413 check before reading it)."""
    chunk_values = CHUNK_VALUES if session_or_none is None else _layout(session_or_none)[2]
    return (chunk_values // he.SLOTS) * _PART_BYTES + 1024


def setup(site: Datasite, study_id: str, number: int) -> dict:
    """``{"setup": ...}`` for a participant (key id, layout, chunking, its progress), or null."""
    session = SecureSession.objects.filter(study_id=study_id, number=number).first()
    if session is None:
        session_for(site, study_id, number)  # raises unless the session is merely not open yet
        return {"setup": None}
    session = _he_session(site, study_id, number)
    key_id, length, chunk_values = _layout(session)
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
            "received": _received(session, site.name),
            "committed": site.name in messages(session, "commit"),
        }
    }


def receive_chunk(site: Datasite, study_id: str, number: int, index: int, blob: bytes) -> None:
    """Validate one encrypted chunk completely and keep it until the contributors are fixed."""
    session = _he_session(site, study_id, number)
    if session.phase != Phase.UPLOAD:
        raise Conflict(f"chunks are not accepted now (phase {session.phase})")
    if site.name in messages(session, "commit"):
        raise Conflict(f"{site.name} already committed its upload")
    key_id, length, chunk_values = _layout(session)
    if not 0 <= index < he.n_chunks(length, chunk_values):
        raise ServiceError(f"chunk index {index} is out of range")
    try:
        he.check_contribution(
            blob, key_id=key_id, total_values=length, chunk_values=chunk_values, chunk_index=index
        )
    except he.HEError as exc:
        raise ServiceError(f"rejected chunk: {exc}") from exc
    folder = _uploads(session, site.name)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{index:06d}.ckks", blob)


def commit(site: Datasite, study_id: str, number: int, data: object) -> None:
    """A site's upload is complete: it joins the sum (with its public round metrics)."""
    session = _he_session(site, study_id, number)
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or len(str(metrics)) > MAX_METRICS_BYTES:
        raise ServiceError("expected {'metrics': {...}} with a small metrics object")
    _, length, chunk_values = _layout(session)
    missing = sorted(set(range(he.n_chunks(length, chunk_values))) - set(_received(session, site.name)))
    if missing:
        raise Conflict(f"chunks not received yet: {missing[:10]}")
    with transaction.atomic():
        session = locked(session)
        if session.phase != Phase.UPLOAD:
            raise Conflict(f"uploads are closed (phase {session.phase})")
        if SecureMessage.objects.filter(session=session, phase="commit", site=site.name).exists():
            raise Conflict(f"{site.name} already committed its upload")
        record(session, site, "commit", {"chunks": he.n_chunks(length, chunk_values)})
        rnd = Round.objects.get(study_id=study_id, number=number)
        SiteUpdate.objects.get_or_create(
            round=rnd,
            datasite=site,
            defaults={"local_steps": engine.plan_of(session.study).local_steps, "metrics": metrics},
        )


def aggregate_chunk(site: Datasite, study_id: str, number: int, index: int) -> bytes:
    """One frame of the round's aggregate, for the site asked to decrypt it (and no other)."""
    session = _he_session(site, study_id, number)
    if session.phase != Phase.DECRYPT or not session.decryptors or session.decryptors[-1] != site.name:
        raise Conflict(f"{site.name} is not asked to decrypt round {number}")
    path = _aggregate_path(session, index)
    if not path.is_file():
        raise ServiceError(f"no aggregate chunk {index}")
    return path.read_bytes()


# ----------------------------------------------------------------------------- the engine step


def drive(study: Study, rnd: Round) -> None:
    """One engine step of an ``he`` training round (called by ``secure_rounds.drive``)."""
    session = SecureSession.objects.filter(study=study, number=rnd.number).first()
    if session is None:
        session = _open(study, rnd)
        if session is None:
            return
    if session.phase == Phase.UPLOAD:
        if rnd.last_sent_at is None or timezone.now() - rnd.last_sent_at > engine.RESEND_EVERY:
            engine._send_round(study, rnd)
        if not _close_uploads(study, session):
            return
    if session.phase == Phase.DECRYPT:
        _decrypt(study, rnd, session)


def _open(study: Study, rnd: Round) -> SecureSession | None:
    key = StudyKey.objects.filter(study=study, done=True).first()
    if key is None:
        engine._fail(study, "the study has no CKKS key (the key ceremony did not finish)")
        return None
    enc = _update_encoding(study)
    with transaction.atomic():
        session, created = SecureSession.objects.get_or_create(
            study=study,
            number=rnd.number,
            defaults={
                "kind": SecureSession.Kind.UPDATE,
                "mode": "he",
                "session_id": session_id(study.pk, rnd.number),
                "params": {
                    "sites": list(rnd.participants),
                    "key_id": key.key_id,
                    "vector_length": enc.length,
                    "chunk_values": CHUNK_VALUES,
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
    engine._set(study, phase="he:upload")
    return session


def _close_uploads(study: Study, session: SecureSession) -> bool:
    """Fix the contributors, sum their chunks, drop the individual chunks; True when closed."""
    plan = engine.plan_of(study)
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
    key_id, length, chunk_values = _layout(session)
    folder = _aggregate_path(session, 0).parent
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        [_uploads(session, s) / f"{index:06d}.ckks" for s in survivors]
        for index in range(he.n_chunks(length, chunk_values))
    ]
    try:
        aggregates = he.sum_stored_contributions(
            files, key_id=key_id, total_values=length, chunk_values=chunk_values, workers=SUM_WORKERS
        )
        for index, aggregate in enumerate(aggregates):
            atomic_write(_aggregate_path(session, index), aggregate)
    except (he.HEError, OSError, BrokenProcessPool) as exc:
        fail_session(session, f"the encrypted sum could not be formed: {exc}")
        return False
    for site in session.params["sites"]:
        for path in _uploads(session, site).glob("*"):
            path.unlink()
    dropped = sorted(set(session.params["sites"]) - committed, key=order.get)
    move(session, Phase.DECRYPT, survivors=survivors, dropped=dropped)
    engine._set(study, phase="he:decrypt")
    return True


def _decrypt(study: Study, rnd: Round, session: SecureSession) -> None:
    """Ask the next key-holding site to decrypt the aggregate; close the round with its answer."""
    key = StudyKey.objects.get(study=study)
    holders = [*session.survivors, key.key_holder, *key.delivered]
    candidates = [s for s in dict.fromkeys(holders) if s not in session.decryptors]
    if not candidates:
        fail_session(session, f"no key-holding site decrypted the aggregate (asked: {session.decryptors})")
        return
    name = candidates[0]
    SecureSession.objects.filter(pk=session.pk).update(decryptors=[*session.decryptors, name])
    session.decryptors = [*session.decryptors, name]
    _, length, chunk_values = _layout(session)
    body = {
        "total_values": length,
        "n_chunks": he.n_chunks(length, chunk_values),
        "contributors": list(session.survivors),
    }
    with SiteClient(Datasite.objects.get(name=name), timeout=600) as client:
        try:
            blob = client._call(
                "POST", f"/secure/studies/{study.pk}/rounds/{rnd.number}/he/decrypt", json=body
            ).content
        except SiteUnreachable as exc:
            log.warning("%s did not decrypt round %s: %s", name, rnd.number, exc)
            trail.record(
                "he.decrypt_failed",
                trail.SYSTEM,
                f"study:{study.pk}",
                {"round": rnd.number, "site": name, "error": str(exc)[:300]},
            )
            return
    try:
        summed = load(blob)["sum"]
    except (SafetensorError, KeyError, ValueError) as exc:
        log.warning("%s answered a malformed sum: %s", name, exc)
        return
    if summed.shape != (length,) or summed.dtype != np.float64 or not np.isfinite(summed).all():
        log.warning("%s answered a sum of the wrong shape or with non-finite values", name)
        return
    trail.record("he.decrypted", trail.SYSTEM, f"study:{study.pk}", {"round": rnd.number, "site": name})
    close_round(
        study,
        rnd,
        session,
        summed,
        {"survivors": list(session.survivors), "dropped": list(session.dropped), "decrypted_by": name},
    )
