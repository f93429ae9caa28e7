"""Writing files so that a crash never leaves half of one: the one atomic write of the code base."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and an atomic rename.

    ``private``: the file is readable by its owner only (0600) from its first byte, for keys.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
