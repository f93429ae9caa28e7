"""What an SO-100 dataset is made of: joint names and ranges, accepted robot types, the
contributor conventions, and the validation summary and error types."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "ACCEPTED_ROBOT_TYPES",
    "CODEBASE_VERSION",
    "CONTRIBUTORS_FILE",
    "CONTRIBUTOR_FEATURE",
    "EXPECTED_FPS",
    "JOINT_RANGES",
    "LEROBOT_DEFAULT_FEATURES",
    "SO100_FEATURES",
    "SO100_JOINT_NAMES",
    "UNKNOWN_CONTRIBUTOR",
    "DatasetError",
    "DatasetSummary",
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
