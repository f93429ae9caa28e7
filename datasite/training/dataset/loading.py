"""SO-100 LeRobot v3.0 datasets at a datasite: validation, loading, contributors, mocks.

Every read of a dataset goes through lerobot's ``LeRobotDataset`` with the Hugging Face hub
offline, after this module has checked the folder itself, so a broken folder gives a
:class:`DatasetError` naming what is missing instead of a hub download attempt.

Validation policy (what "an SO-100 dataset" means here):

* ``meta/info.json`` with ``codebase_version`` "v3.0", episodes metadata, tasks and every
  data (and video) file that the episodes metadata points to.
* ``robot_type`` is one of :data:`ACCEPTED_ROBOT_TYPES` (``so100``/``so100_follower`` and the
  SO-101 revision ``so101``/``so101_follower``, which has the same six joints and motor
  names). A missing robot type is accepted with a warning (the joint schema decides); any
  other robot type is refused.
* ``observation.state`` and ``action`` exist, are float32 of shape (6,). Their names, when
  given, should be the six SO-100 joints; other names of the right shape are accepted with
  a warning saying the SO-100 joint order is assumed.
* ``fps`` is positive (a warning when it is not 30). Cameras (any ``observation.images.*``)
  are optional and may have any name; extra features are kept.

Contributors: ``meta/fedsilo_contributors.json`` maps episode_index → pseudonym; without it
the per-frame int64 ``contributor.id`` feature gives ``contributor-<id>``; without either,
every episode belongs to :data:`UNKNOWN_CONTRIBUTOR`.

lerobot and torch are imported lazily (5–8 s), so importing this module is cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

__all__ = [
    "ACCEPTED_ROBOT_TYPES",
    "CONTRIBUTORS_FILE",
    "CONTRIBUTOR_FEATURE",
    "JOINT_RANGES",
    "SO100_JOINT_NAMES",
    "UNKNOWN_CONTRIBUTOR",
    "DatasetError",
    "DatasetSummary",
    "episode_contributors",
    "episodes_for_contributors",
    "load_dataset",
    "make_mock",
    "mock_preview",
    "validate_dataset",
    "write_contributors",
]

SO100_JOINT_NAMES: tuple[str, ...] = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)
# Plausible joint ranges (lerobot SO-100 follower: degrees, gripper 0–100), used by mocks.
JOINT_RANGES: dict[str, tuple[float, float]] = {
    "shoulder_pan.pos": (-100.0, 100.0),
    "shoulder_lift.pos": (-100.0, 100.0),
    "elbow_flex.pos": (-100.0, 100.0),
    "wrist_flex.pos": (-100.0, 100.0),
    "wrist_roll.pos": (-100.0, 100.0),
    "gripper.pos": (0.0, 100.0),
}
ACCEPTED_ROBOT_TYPES = frozenset({"so100", "so100_follower", "so101", "so101_follower"})
CODEBASE_VERSION = "v3.0"
EXPECTED_FPS = 30
CONTRIBUTOR_FEATURE = "contributor.id"
CONTRIBUTORS_FILE = "meta/fedsilo_contributors.json"
UNKNOWN_CONTRIBUTOR = "unknown"
SO100_FEATURES = ("observation.state", "action")
# Added by lerobot to every dataset; not part of a dataset's own schema.
LEROBOT_DEFAULT_FEATURES = frozenset({"timestamp", "frame_index", "episode_index", "index", "task_index"})
_CONVERT_HINT = (
    "convert it with `python -m lerobot.scripts.convert_dataset_v21_to_v30 "
    "--repo-id=<id> --root=<folder> --push-to-hub=false`"
)


class DatasetError(ValueError):
    """A folder is not a usable SO-100 LeRobot v3.0 dataset; the message says why and what to do."""


@dataclass(frozen=True)
class DatasetSummary:
    """What validation learned about a dataset; ``to_dict()`` is JSON-serialisable."""

    repo_id: str
    root: str
    codebase_version: str
    robot_type: str | None
    fps: int
    num_episodes: int
    num_frames: int
    features: dict[str, dict[str, Any]]  # key → {"dtype", "shape", "names"}
    cameras: list[str]
    contributors: dict[int, str]  # episode_index → pseudonym
    stats: dict[str, dict[str, Any]]  # key → stat name → nested lists
    tasks: list[str] = field(default_factory=list)
    episode_lengths: dict[int, int] = field(default_factory=dict)  # episode_index → frames
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["contributors"] = {str(k): v for k, v in self.contributors.items()}
        out["episode_lengths"] = {str(k): v for k, v in self.episode_lengths.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSummary:
        """Inverse of ``to_dict``; unknown keys (added by callers) are ignored."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["contributors"] = {int(k): v for k, v in data.get("contributors", {}).items()}
        data["episode_lengths"] = {int(k): int(v) for k, v in data.get("episode_lengths", {}).items()}
        return cls(**data)


# ---------------------------------------------------------------- lerobot access


def _offline() -> None:
    """Make sure nothing below can reach a hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - lerobot depends on it
        pass


def _default_repo_id(root: Path) -> str:
    return f"local/{root.resolve().name or 'dataset'}"


def _open(
    root: Path,
    repo_id: str | None,
    episodes: list[int] | None = None,
    delta_timestamps: dict | None = None,
) -> LeRobotDataset:
    _offline()
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


# ---------------------------------------------------------------- structure


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{what} at {path} is not readable JSON ({exc}); re-copy it.") from exc


def _check_structure(root: Path) -> dict[str, Any]:
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
    info = _read_json(info_path, "meta/info.json")
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


def _check_so100(root: Path, info: dict[str, Any]) -> list[str]:
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


# ---------------------------------------------------------------- contributors


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


def _contributors(root: Path, info: dict[str, Any], warnings: list[str] | None = None) -> dict[int, str]:
    n = int(info["total_episodes"])
    path = root / CONTRIBUTORS_FILE
    if path.is_file():
        data = _read_json(path, CONTRIBUTORS_FILE)
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
    return _contributors(root, _check_structure(root))


def episodes_for_contributors(root: Path, allowed: set[str]) -> list[int]:
    """Sorted episode indices whose contributor is in ``allowed`` (e.g. those still consenting)."""
    return sorted(ep for ep, who in episode_contributors(root).items() if who in allowed)


# ---------------------------------------------------------------- public API


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
    info = _check_structure(root)
    warnings = _check_so100(root, info)
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
        contributors=_contributors(root, info, warnings),
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
    info = _check_structure(root)
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


# ---------------------------------------------------------------- mocks


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
    _offline()
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
