"""Checks of a dataset folder before lerobot reads it: a complete LeRobot v3.0 layout, and an
SO-100 schema (robot type, joints, fps). A failure raises :class:`DatasetError` saying what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasite.training.dataset.schema import (
    ACCEPTED_ROBOT_TYPES,
    CODEBASE_VERSION,
    EXPECTED_FPS,
    SO100_FEATURES,
    SO100_JOINT_NAMES,
    DatasetError,
)

__all__ = ["check_so100", "check_structure", "read_json"]

_CONVERT_HINT = (
    "convert it with `python -m lerobot.scripts.convert_dataset_v21_to_v30 "
    "--repo-id=<id> --root=<folder> --push-to-hub=false`"
)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{what} at {path} is not readable JSON ({exc}); re-copy it.") from exc


def check_structure(root: Path) -> dict[str, Any]:
    """Check the folder is a complete LeRobot v3.0 dataset; return its info.json."""
    if not root.exists():
        raise DatasetError(f"{root} does not exist; give the path of a LeRobot dataset folder.")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give the path of a LeRobot dataset folder.")
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise DatasetError(
            f"{root} is not a LeRobot dataset: meta/info.json is missing. Point at the folder "
            "that holds meta/ and data/, or record/convert the data with lerobot (v3.0 format)."
        )
    info = read_json(info_path, "meta/info.json")
    if not isinstance(info, dict):
        raise DatasetError(f"meta/info.json in {root} is not a JSON object; re-copy it.")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise DatasetError(
            f"{root} is LeRobot format {version!r} (meta/info.json codebase_version) but "
            f"fedsilo needs {CODEBASE_VERSION!r}: {_CONVERT_HINT}."
        )
    missing = [k for k in ("fps", "features", "total_episodes", "total_frames", "data_path") if k not in info]
    if missing:
        raise DatasetError(
            f"meta/info.json in {root} lacks {', '.join(missing)}; it was not written by "
            "lerobot v3.0 — re-export the dataset with lerobot."
        )
    if not isinstance(info["features"], dict):
        raise DatasetError(f"meta/info.json in {root}: 'features' is not an object; re-copy it.")
    counts = (info["total_episodes"], info["total_frames"])
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise DatasetError(f"meta/info.json in {root}: total_episodes/total_frames are not integers.")
    if info["total_episodes"] < 1 or info["total_frames"] < 1:
        raise DatasetError(
            f"{root} has no recorded episodes (total_episodes={info['total_episodes']}); "
            "record at least one episode and call finalize()."
        )
    if not (root / "meta" / "tasks.parquet").is_file():
        raise DatasetError(
            f"{root} lacks meta/tasks.parquet; the recording was not finalized or the copy is incomplete."
        )
    ep_files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not ep_files:
        raise DatasetError(
            f"{root} lacks episode metadata (meta/episodes/chunk-*/file-*.parquet); the "
            "recording was not finalized or the copy is incomplete."
        )
    _check_data_files(root, info, ep_files)
    return info


def _check_data_files(root: Path, info: dict[str, Any], ep_files: list[Path]) -> None:
    """Every data/video file named by the episodes metadata must exist locally."""
    import pyarrow.parquet as pq

    video_keys = [
        k for k, ft in info["features"].items() if isinstance(ft, dict) and ft.get("dtype") == "video"
    ]
    try:
        table = pq.read_table([str(p) for p in ep_files] if len(ep_files) > 1 else ep_files[0])
    except Exception as exc:
        raise DatasetError(
            f"episode metadata in {root}/meta/episodes is unreadable ({exc}); re-copy the dataset."
        ) from exc
    cols = set(table.column_names)
    need = ["episode_index", "data/chunk_index", "data/file_index"]
    for key in video_keys:
        need += [f"videos/{key}/chunk_index", f"videos/{key}/file_index"]
    lacking = [c for c in need if c not in cols]
    if lacking:
        raise DatasetError(
            f"episode metadata in {root} lacks columns {lacking}; it was not "
            "written by lerobot v3.0 — re-export the dataset."
        )
    rows = table.select(need).to_pylist()
    found = {int(r["episode_index"]) for r in rows}
    expected = set(range(int(info["total_episodes"])))
    if found != expected:
        raise DatasetError(
            f"{root}: meta/info.json announces {len(expected)} episodes but the episode "
            f"metadata lists {len(found)}; the copy is incomplete or inconsistent."
        )
    missing: set[str] = set()
    for r in rows:
        path = info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
        if not (root / path).is_file():
            missing.add(path)
        for key in video_keys:
            vpath = (
                info.get("video_path")
                or "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
            )
            vpath = vpath.format(
                video_key=key,
                chunk_index=r[f"videos/{key}/chunk_index"],
                file_index=r[f"videos/{key}/file_index"],
            )
            if not (root / vpath).is_file():
                missing.add(vpath)
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (" …" if len(missing) > 5 else "")
        raise DatasetError(
            f"{root} lacks {len(missing)} data file(s): {shown}; copy the "
            "complete dataset folder (data/ and videos/)."
        )


def _joint_names(names: Any) -> list[str] | None:
    """Names of a vector feature: a list, or lerobot's older {"motors": [...]} form."""
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict) and len(names) == 1:
        (inner,) = names.values()
        if isinstance(inner, list):
            return [str(n) for n in inner]
    return None


def check_so100(root: Path, info: dict[str, Any]) -> list[str]:
    """Check robot type, state/action schema and fps; return warnings."""
    warnings: list[str] = []
    robot = info.get("robot_type")
    if robot in (None, "", "unknown"):
        warnings.append("robot_type is not set; accepted because state and action match SO-100.")
    elif str(robot).strip().lower() not in ACCEPTED_ROBOT_TYPES:
        raise DatasetError(
            f"{root} was recorded with robot_type {robot!r}; fedsilo takes SO-100 arms only "
            f"({', '.join(sorted(ACCEPTED_ROBOT_TYPES))})."
        )
    features = info["features"]
    for key in SO100_FEATURES:
        ft = features.get(key)
        if not isinstance(ft, dict):
            raise DatasetError(
                f"{root} lacks the SO-100 feature {key!r} (float32, shape (6,)); record "
                "it with lerobot's so100_follower robot, or rename your feature to "
                f"{key!r} in meta/info.json and the data files."
            )
        shape = tuple(ft.get("shape") or ())
        if ft.get("dtype") != "float32" or shape != (6,):
            raise DatasetError(
                f"{root}: feature {key!r} is {ft.get('dtype')} with shape {shape}, but SO-100 "
                f"needs float32 with shape (6,) (joints {', '.join(SO100_JOINT_NAMES)})."
            )
        names = _joint_names(ft.get("names"))
        if names is not None and names != list(SO100_JOINT_NAMES):
            warnings.append(
                f"{key!r} names {names} differ from the SO-100 joints; assuming the SO-100 "
                f"order {list(SO100_JOINT_NAMES)}."
            )
    fps = info.get("fps")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0:
        raise DatasetError(f"{root}: fps is {fps!r} in meta/info.json; it must be a positive number.")
    if fps != EXPECTED_FPS:
        warnings.append(f"fps is {fps}, not {EXPECTED_FPS} as SO-100 recordings usually are.")
    if not _cameras(features):
        warnings.append("no camera feature: only state-based policies can train on it.")
    return warnings


def _cameras(features: dict[str, Any]) -> list[str]:
    return [k for k, ft in features.items() if isinstance(ft, dict) and ft.get("dtype") in ("image", "video")]
