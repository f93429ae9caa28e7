"""Secure sessions: one :class:`~orchestrator.secure_models.SecureSession` per secure sum, the
normalization statistics of a study (``number`` 0) and each training round (``number`` = round).

State lives in the database and in files, never in a process: the orchestrator serves
requests from several gunicorn workers and runs the engine in another process. Valid
messages are stored as rows (:func:`record`, :func:`messages`); a ``secagg`` session's server
is rebuilt from them when needed (:func:`server`, :func:`server_at_share`: cheap, keys and
ciphertexts, O(n²) small items). A masked input (one uint32 per value, one-time-padded by the
site's self mask and pairwise masks) is validated and written as received to
``<study>/secure/session-<r>/masked/<site>.masked``, atomically and under an exclusive file
lock (:func:`masked_lock`): one write per site, as a plain round stores each update (a
running sum file would cost a read, an add and a rewrite of the whole vector per site, ~3.5x
the time at 1e7 values, for the sake of half the disk). The sum of the survivors' inputs is
formed by streaming them through the page cache (:func:`masked_sum`; memory: one vector plus
a chunk). An ``he`` session keeps its encrypted chunks next to them
(:mod:`orchestrator.secure.he_files`). :func:`discard_files` deletes both once a sum is used.
"""

from __future__ import annotations

import base64
import fcntl
import json
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit import trail
from orchestrator import checkpoints, studies
from orchestrator.models import Datasite, Round, SiteUpdate, Study
from orchestrator.secure_models import SecureMessage, SecureSession
from privacy.secagg import EncryptedShare, KeyAdvert, ProtocolError, SecAggParams, SecAggServer
from privacy.secure_vector import UpdateEncoding, layout_from

Phase = SecureSession.Phase
SUM_CHUNK = 1 << 18  # words per step of the ring sum of stored inputs (1 MiB)


def session_id(study_id: str, number: int) -> str:
    return f"fedsilo/{study_id}/" + ("stats" if number == 0 else f"round-{number}")


def update_encoding(study: Study) -> UpdateEncoding:
    """How a training round's update is laid out as one vector for a secure sum."""
    plan = studies.plan_of(study)
    return UpdateEncoding(
        layout_from(study.manifest), plan.strategy, plan.secure.clip, plan.secure.max_weight, plan.local_steps
    )


def open_session(
    study: Study, number: int, kind: str, sites: list[str], layout: dict, length: int, clip: float, deadline
) -> SecureSession | None:
    """Open the ``secagg`` session of round ``number`` (idempotent); None, with the study
    failed, when its parameters are impossible."""
    plan = studies.plan_of(study)
    try:
        params = SecAggParams(tuple(sites), length, clip, plan.secure.threshold)
    except ValueError as exc:
        studies.fail(study, f"secure aggregation cannot start ({kind}, {len(sites)} sites): {exc}")
        return None
    with transaction.atomic():
        session, created = SecureSession.objects.get_or_create(
            study=study,
            number=number,
            defaults={
                "kind": kind,
                "session_id": session_id(study.pk, number),
                "params": params.to_dict(),
                "layout": layout,
                "phase_deadline": deadline,
            },
        )
        if created:
            trail.record(
                "secagg.opened",
                trail.SYSTEM,
                f"study:{study.pk}",
                {
                    "round": number,
                    "kind": kind,
                    "sites": list(params.sites),
                    "threshold": params.threshold,
                    "vector_length": length,
                },
            )
    return session


# ----------------------------------------------------------------------------- the secagg server


def site_keys(names) -> dict[str, bytes]:
    """The members' Ed25519 signing keys, as they gave them when they joined."""
    sites = {s.name: s for s in Datasite.objects.filter(name__in=list(names))}
    return {n: base64.b64decode(sites[n].signing_key) for n in names if n in sites and sites[n].signing_key}


def params(session: SecureSession) -> SecAggParams:
    return SecAggParams.from_dict(session.params)


def server(session: SecureSession) -> SecAggServer:
    """A fresh server of the session (phase 1: no message added yet)."""
    p = params(session)
    return SecAggServer(session.session_id, p, site_keys(p.sites))


def server_at_share(session: SecureSession, skip: str | None = None) -> SecAggServer:
    """The server rebuilt with the advertised keys and the stored shares (but ``skip``'s)."""
    srv = server(session)
    stored = messages(session, "advert")
    srv.collect_adverts([KeyAdvert.from_dict(stored[s]) for s in session.advertised])
    for name, payload in sorted(messages(session, "shares").items()):
        if name != skip:
            srv.add_shares([EncryptedShare.from_dict(d) for d in payload["shares"]])
    return srv


# ----------------------------------------------------------------------------- messages and files


def messages(session: SecureSession, phase: str) -> dict[str, dict]:
    return dict(SecureMessage.objects.filter(session=session, phase=phase).values_list("site", "payload"))


def record(session: SecureSession, site: Datasite, phase: str, payload: dict) -> None:
    SecureMessage.objects.update_or_create(
        session=session, phase=phase, site=site.name, defaults={"payload": payload}
    )
    trail.record(
        f"{session.mode}.{phase}_received",
        f"node:{site.name}",
        f"study:{session.study_id}",
        {"round": session.number},
    )


def folder(session: SecureSession) -> Path:
    path = checkpoints.study_dir(session.study_id) / "secure" / f"session-{session.number:05d}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def masked_lock(session: SecureSession) -> Iterator[Path]:
    """Exclusive across processes: storing a masked input, closing the masked phase.

    Yields the folder of the session's masked inputs: ``<site>.masked`` is a site's
    ``MaskedInput`` blob exactly as received and validated, written atomically, so a file
    is there if and only if that input is in the round."""
    base = folder(session)
    with open(base / "masked.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            (base / "masked").mkdir(exist_ok=True)
            yield base / "masked"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def included(masked: Path) -> list[str]:
    """The sites whose masked input is stored in the folder ``masked``."""
    return [p.name.removesuffix(".masked") for p in masked.glob("*.masked")]


def _masked_header(path: Path) -> tuple[dict, int]:
    """A stored blob's header and the offset of its vector (see ``MaskedInput.to_bytes``)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack(">I", fh.read(4))
        return json.loads(fh.read(n)), 4 + n


def masked_sum(masked: Path, sites: list[str], length: int) -> tuple[np.ndarray, dict[str, bytes]]:
    """The ring sum of the stored inputs of ``sites``, read through the page cache chunk by
    chunk (memory: the sum plus a chunk), and each site's commitment to its self-mask seed."""
    total = np.zeros(length, dtype=np.uint32)
    commitments = {}
    for name in sites:
        path = masked / f"{name}.masked"
        header, offset = _masked_header(path)
        if header.get("site_id") != name or header.get("length") != length:
            raise ProtocolError(f"the stored masked input of {name} does not belong to this sum")
        commitments[name] = base64.b64decode(header["b_commitment"])
        vector = np.memmap(path, dtype="<u4", mode="r", offset=offset, shape=(length,))
        for a in range(0, length, SUM_CHUNK):
            np.add(total[a : a + SUM_CHUNK], vector[a : a + SUM_CHUNK], out=total[a : a + SUM_CHUNK])
        del vector
    return total, commitments


def discard_files(session: SecureSession) -> None:
    """Delete what a session kept on disk: the masked inputs (secagg), the chunks (he)."""
    base = folder(session)
    shutil.rmtree(base / "masked", ignore_errors=True)
    shutil.rmtree(base / "he", ignore_errors=True)


# ----------------------------------------------------------------------------- the session's course


def gone_sites(session: SecureSession) -> set[str]:
    """Sites known not to take part: refused the round or reported an error."""
    if session.kind != SecureSession.Kind.UPDATE:
        return set()
    rnd = Round.objects.get(study_id=session.study_id, number=session.number)
    errors = SiteUpdate.objects.filter(round=rnd).exclude(error="").values_list("datasite__name", flat=True)
    return set(rnd.dropped) | set(errors)


def move(session: SecureSession, phase: str, **fields) -> None:
    """Close the session's phase: the next one opens, for ``FEDSILO_SECAGG_PHASE_SECONDS``."""
    deadline = timezone.now() + timedelta(seconds=settings.FEDSILO_SECAGG_PHASE_SECONDS)
    SecureSession.objects.filter(pk=session.pk).update(phase=phase, phase_deadline=deadline, **fields)
    for key, value in fields.items():
        setattr(session, key, value)
    session.phase, session.phase_deadline = phase, deadline
    trail.record(
        "secagg.phase",
        trail.SYSTEM,
        f"study:{session.study_id}",
        {"round": session.number, "phase": phase, **fields},
    )


def fail_session(session: SecureSession, reason: str) -> None:
    """Fail the session, its round and the study; delete its files."""
    SecureSession.objects.filter(pk=session.pk).update(phase=Phase.FAILED, error=reason)
    study = Study.objects.get(pk=session.study_id)
    why = f"secure aggregation of round {session.number} failed: {reason}"
    if session.kind == SecureSession.Kind.UPDATE:
        studies.fail_round(study, Round.objects.get(study=study, number=session.number), why)
    else:
        studies.fail(study, why)
    discard_files(session)


def finish(session: SecureSession) -> None:
    """Mark the session's sum used (inside the caller's transaction)."""
    SecureSession.objects.filter(pk=session.pk).update(phase=Phase.DONE)
