"""Mock datasets for other parties: a synthetic LeRobot dataset, or a JSON preview, with the
same schema as a real one and no real value in it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from datasite.training.dataset.contributors import write_contributors
from datasite.training.dataset.loading import validate_dataset
from datasite.training.dataset.schema import (
    CONTRIBUTOR_FEATURE,
    JOINT_RANGES,
    LEROBOT_DEFAULT_FEATURES,
    SO100_FEATURES,
    SO100_JOINT_NAMES,
    DatasetSummary,
)
from datasite.training.runtime import hub_offline

__all__ = ["make_mock", "mock_preview"]


def _as_summary(summary_or_root: DatasetSummary | Path | str) -> DatasetSummary:
    if isinstance(summary_or_root, DatasetSummary):
        return summary_or_root
    return validate_dataset(Path(summary_or_root))


def _own_features(summary: DatasetSummary) -> dict[str, dict[str, Any]]:
    return {
        k: {"dtype": ft["dtype"], "shape": tuple(ft["shape"]), "names": ft["names"]}
        for k, ft in summary.features.items()
        if k not in LEROBOT_DEFAULT_FEATURES
    }


def _mock_value(key: str, ft: dict[str, Any], rng: np.random.Generator) -> Any:
    """A synthetic value for one feature: depends on the schema only, never on real data."""
    dtype, shape = ft["dtype"], tuple(ft["shape"])
    if dtype in ("image", "video"):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if dtype == "string":
        return "mock"
    if key in SO100_FEATURES:
        lo = np.array([JOINT_RANGES[j][0] for j in SO100_JOINT_NAMES])
        hi = np.array([JOINT_RANGES[j][1] for j in SO100_JOINT_NAMES])
        return rng.uniform(lo, hi).astype(np.float32)
    np_dtype = np.dtype(dtype)
    if key == CONTRIBUTOR_FEATURE:
        return np.zeros(shape, dtype=np_dtype)
    if np_dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(np_dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(np_dtype)
    return rng.normal(0.0, 1.0, size=shape).astype(np_dtype)


def make_mock(
    summary_or_root: DatasetSummary | Path | str,
    out_root: Path | None = None,
    frames: int = 30,
    seed: int = 0,
    episodes: int = 2,
) -> Path:
    """Write a small synthetic LeRobot dataset with the same schema as the real one.

    Same features (dtype, shape, names), robot type, fps and hence stats keys and shapes;
    values are random within plausible SO-100 joint ranges and noise images, tasks are
    ``"mock task"`` and contributors ``mock-contributor-<n>``. Nothing is read from the real
    data beyond the schema. ``out_root`` must not exist; ``None`` makes a temporary folder.
    Returns the mock's root.
    """
    summary = _as_summary(summary_or_root)
    if out_root is None:
        out_root = Path(tempfile.mkdtemp(prefix="fedsilo-mock-")) / "mock"
    out_root = Path(out_root)
    if out_root.exists():
        raise FileExistsError(f"{out_root} already exists; choose a new folder for the mock")
    episodes = max(1, min(episodes, frames))
    features = _own_features(summary)
    hub_offline()
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.utils import SuppressProgressBars

    rng = np.random.default_rng([seed, 7])
    ds = LeRobotDataset.create(
        repo_id=f"{summary.repo_id}-mock",
        fps=int(summary.fps),
        features=features,
        root=out_root,
        robot_type=summary.robot_type,
        use_videos=any(ft["dtype"] == "video" for ft in features.values()),
        image_writer_threads=0,
        video_backend="pyav",
    )
    per_ep = [frames // episodes + (1 if i < frames % episodes else 0) for i in range(episodes)]
    try:
        with SuppressProgressBars():
            for n in per_ep:
                for _ in range(n):
                    frame = {k: _mock_value(k, ft, rng) for k, ft in features.items()}
                    frame["task"] = "mock task"
                    ds.add_frame(frame)
                ds.save_episode(parallel_encoding=False)
    finally:
        ds.finalize()
    write_contributors(
        out_root, {ep: f"mock-contributor-{ep}" for ep in range(episodes)}, extra={"mock_of": summary.repo_id}
    )
    return out_root


def mock_preview(summary: DatasetSummary | Path | str, frames: int = 3, seed: int = 0) -> dict[str, Any]:
    """JSON-able preview for other parties: schema, stats shapes and a few synthetic frames.

    Carries no real value: no stats numbers, frames, tasks or pseudonyms, only the schema,
    counts and synthetic state/action (images appear as shapes only).
    """
    summary = _as_summary(summary)
    rng = np.random.default_rng([seed, 11])
    features = _own_features(summary)
    rows = []
    for i in range(frames):
        row: dict[str, Any] = {"episode_index": 0, "frame_index": i, "timestamp": round(i / summary.fps, 6)}
        for key, ft in features.items():
            if ft["dtype"] in ("image", "video", "string"):
                continue
            value = np.asarray(_mock_value(key, ft, rng))
            row[key] = value.tolist()
        rows.append(row)
    return {
        "synthetic": True,
        "repo_id": summary.repo_id,
        "codebase_version": summary.codebase_version,
        "robot_type": summary.robot_type,
        "fps": summary.fps,
        "num_episodes": summary.num_episodes,
        "num_frames": summary.num_frames,
        "num_contributors": len(set(summary.contributors.values())),
        "features": {
            k: {"dtype": ft["dtype"], "shape": list(ft["shape"]), "names": ft["names"]}
            for k, ft in summary.features.items()
        },
        "cameras": {
            k: {"dtype": summary.features[k]["dtype"], "shape": list(summary.features[k]["shape"])}
            for k in summary.cameras
        },
        "stats_shape": {
            k: {name: list(np.shape(v)) for name, v in by_stat.items()}
            for k, by_stat in summary.stats.items()
        },
        "frames": rows,
    }
