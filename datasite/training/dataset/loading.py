"""Reading a dataset: every read goes through lerobot's ``LeRobotDataset`` with the hub
offline, after the folder itself was checked (:mod:`.checks`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from datasite.training.dataset.checks import check_so100, check_structure
from datasite.training.dataset.contributors import read_contributors
from datasite.training.dataset.schema import DatasetError, DatasetSummary
from datasite.training.runtime import hub_offline

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

__all__ = ["load_dataset", "validate_dataset"]


def _default_repo_id(root: Path) -> str:
    return f"local/{root.resolve().name or 'dataset'}"


def _open(
    root: Path,
    repo_id: str | None,
    episodes: list[int] | None = None,
    delta_timestamps: dict | None = None,
) -> LeRobotDataset:
    hub_offline()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        return LeRobotDataset(
            repo_id or _default_repo_id(root),
            root=root,
            episodes=episodes,
            delta_timestamps=delta_timestamps,
            video_backend="pyav",
        )
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"lerobot could not read the dataset at {root}: {type(exc).__name__}: {exc}. "
            "Check that the folder is complete (re-copy it) and was written by lerobot >= 0.4."
        ) from exc


def _schema(features: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: {
            "dtype": ft.get("dtype"),
            "shape": [int(s) for s in ft.get("shape") or []],
            "names": ft.get("names"),
        }
        for k, ft in features.items()
        if isinstance(ft, dict)
    }


def _to_lists(stats: dict | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, by_stat in (stats or {}).items():
        out[key] = {name: np.asarray(v).tolist() for name, v in by_stat.items()}
    return out


def validate_dataset(root: Path, repo_id: str | None = None) -> DatasetSummary:
    """Check that ``root`` is an SO-100 LeRobot v3.0 dataset and summarise it.

    The folder structure is checked first; the data are then read only through
    ``LeRobotDataset(repo_id, root=root)`` with the hub offline. Raises :class:`DatasetError`.
    """
    root = Path(root)
    info = check_structure(root)
    warnings = check_so100(root, info)
    ds = _open(root, repo_id)
    meta = ds.meta
    if ds.num_frames != int(info["total_frames"]):
        raise DatasetError(
            f"{root}: meta/info.json announces {info['total_frames']} frames but the data "
            f"files hold {ds.num_frames}; the copy is incomplete."
        )
    tasks = [str(t) for t in meta.tasks.index] if meta.tasks is not None else []
    return DatasetSummary(
        repo_id=ds.repo_id,
        root=str(root.resolve()),
        codebase_version=str(info["codebase_version"]),
        robot_type=meta.robot_type,
        fps=int(meta.fps),
        num_episodes=int(meta.total_episodes),
        num_frames=int(meta.total_frames),
        features=_schema(meta.features),
        cameras=list(meta.camera_keys),
        contributors=read_contributors(root, info, warnings),
        stats=_to_lists(meta.stats),
        tasks=tasks,
        episode_lengths={
            int(e): int(n)
            for e, n in zip(meta.episodes["episode_index"], meta.episodes["length"], strict=True)
        },
        warnings=warnings,
    )


def load_dataset(
    root: Path,
    episodes: list[int] | None = None,
    delta_timestamps: dict | None = None,
    repo_id: str | None = None,
) -> LeRobotDataset:
    """Open ``root`` with ``LeRobotDataset`` (hub offline, pyav video backend).

    ``episodes`` restricts loading to those episode indices (e.g. consenting contributors);
    an empty list or an index outside the dataset raises :class:`DatasetError`.
    """
    root = Path(root)
    info = check_structure(root)
    if episodes is not None:
        episodes = sorted({int(e) for e in episodes})
        if not episodes:
            raise DatasetError(
                f"no episodes selected from {root} (are all contributors withdrawn?); nothing to load."
            )
        n = int(info["total_episodes"])
        bad = [e for e in episodes if not 0 <= e < n]
        if bad:
            raise DatasetError(f"episodes {bad} are not in {root} (it has episodes 0..{n - 1}).")
    return _open(root, repo_id, episodes=episodes, delta_timestamps=delta_timestamps)
