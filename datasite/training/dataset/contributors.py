"""Who recorded which episode: the ``meta/fedsilo_contributors.json`` sidecar maps
episode_index → pseudonym; without it the per-frame int64 ``contributor.id`` feature gives
``contributor-<id>``; without either, every episode belongs to :data:`UNKNOWN_CONTRIBUTOR`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasite.training.dataset.checks import check_structure, read_json
from datasite.training.dataset.schema import (
    CONTRIBUTOR_FEATURE,
    CONTRIBUTORS_FILE,
    UNKNOWN_CONTRIBUTOR,
    DatasetError,
)

__all__ = ["episode_contributors", "episodes_for_contributors", "read_contributors", "write_contributors"]


def write_contributors(root: Path, mapping: dict[int, str], extra: dict | None = None) -> Path:
    """Write the ``meta/fedsilo_contributors.json`` sidecar (episode_index → pseudonym)."""
    path = Path(root) / CONTRIBUTORS_FILE
    body = {
        "version": 1,
        **(extra or {}),
        "episodes": {str(int(k)): str(v) for k, v in sorted(mapping.items())},
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def read_contributors(root: Path, info: dict[str, Any], warnings: list[str] | None = None) -> dict[int, str]:
    """episode_index → pseudonym of a checked dataset (``info``: its meta/info.json): from the
    sidecar, else from the ``contributor.id`` feature, else all unknown; ``warnings`` collects
    what was assumed."""
    n = int(info["total_episodes"])
    path = root / CONTRIBUTORS_FILE
    if path.is_file():
        data = read_json(path, CONTRIBUTORS_FILE)
        episodes = data.get("episodes") if isinstance(data, dict) and "episodes" in data else data
        if not isinstance(episodes, dict):
            raise DatasetError(f"{path} must map episode_index to a pseudonym; re-generate it.")
        out: dict[int, str] = {}
        for k, v in episodes.items():
            try:
                ep = int(k)
            except ValueError:
                raise DatasetError(f"{path}: key {k!r} is not an episode index.") from None
            if not isinstance(v, str) or not v:
                raise DatasetError(f"{path}: episode {k} has no pseudonym string.")
            if 0 <= ep < n:
                out[ep] = v
        absent = [ep for ep in range(n) if ep not in out]
        if absent and warnings is not None:
            warnings.append(
                f"{len(absent)} episode(s) have no contributor in {CONTRIBUTORS_FILE}"
                f"; counted as {UNKNOWN_CONTRIBUTOR!r}."
            )
        return {ep: out.get(ep, UNKNOWN_CONTRIBUTOR) for ep in range(n)}
    if CONTRIBUTOR_FEATURE in info["features"]:
        import pyarrow.parquet as pq

        ids: dict[int, int] = {}
        for f in sorted((root / "data").glob("*/*.parquet")):
            t = pq.read_table(f, columns=["episode_index", CONTRIBUTOR_FEATURE]).to_pydict()
            for ep, cid in zip(t["episode_index"], t[CONTRIBUTOR_FEATURE], strict=True):
                cid = cid[0] if isinstance(cid, list) else cid
                ids.setdefault(int(ep), int(cid))
        return {ep: f"contributor-{ids[ep]}" if ep in ids else UNKNOWN_CONTRIBUTOR for ep in range(n)}
    if warnings is not None:
        warnings.append(f"no contributor information; every episode counts as {UNKNOWN_CONTRIBUTOR!r}.")
    return dict.fromkeys(range(n), UNKNOWN_CONTRIBUTOR)


def episode_contributors(root: Path) -> dict[int, str]:
    """episode_index → contributor pseudonym (``"unknown"`` where the dataset does not say)."""
    root = Path(root)
    return read_contributors(root, check_structure(root))


def episodes_for_contributors(root: Path, allowed: set[str]) -> list[int]:
    """Sorted episode indices whose contributor is in ``allowed`` (e.g. those still consenting)."""
    return sorted(ep for ep, who in episode_contributors(root).items() if who in allowed)
