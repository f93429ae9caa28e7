"""Where an ``he`` session keeps its ciphertexts: ``<session>/he/uploads/<site>/<i>.ckks`` (a
site's validated chunks until the contributors are fixed) and ``<session>/he/aggregate/<i>.ckks``
(the summed frames, served to the site asked to decrypt)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from orchestrator.secure import sessions
from orchestrator.secure_models import SecureSession
from privacy import he

_PART_BYTES = 2 * 2 * he.POLY_MODULUS_DEGREE * 8 + 4  # a ciphertext part and its length prefix


def chunk_values() -> int:
    """Values per encrypted chunk of a new session (``FEDSILO_HE_CHUNK_VALUES``)."""
    return settings.FEDSILO_HE_CHUNK_VALUES or he.DEFAULT_CHUNK_VALUES


def layout(session: SecureSession) -> tuple[bytes, int, int]:
    """(key id, vector length, chunk values) of a session."""
    p = session.params
    return bytes.fromhex(p["key_id"]), int(p["vector_length"]), int(p["chunk_values"])


def uploads(session: SecureSession, site: str) -> Path:
    return sessions.folder(session) / "he" / "uploads" / site


def aggregate_path(session: SecureSession, index: int) -> Path:
    return sessions.folder(session) / "he" / "aggregate" / f"{index:06d}.ckks"


def received(session: SecureSession, site: str) -> list[int]:
    """The indices of the chunks held for ``site``."""
    folder = uploads(session, site)
    return sorted(int(p.stem) for p in folder.glob("*.ckks")) if folder.is_dir() else []


def chunk_limit(study_id: str, number: int) -> int:
    """Largest acceptable chunk body of round ``number`` (for the 413 check before reading it)."""
    session = SecureSession.objects.filter(study_id=study_id, number=number, mode="he").first()
    values = chunk_values() if session is None else layout(session)[2]
    return (values // he.SLOTS) * _PART_BYTES + 1024
