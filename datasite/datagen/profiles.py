"""Site profiles: how one site's recordings look (task mix, arm speed, light, camera, where
objects lie); differences between profiles make sites non-IID."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile", "TaskSpec"]


@dataclass(frozen=True)
class TaskSpec:
    """One task of a profile's mix: ``kind`` is "pick_place" or "stack"."""

    kind: str
    colour: str
    target: str  # a drop zone (scripted.BINS) for pick_place, a cube colour for stack
    weight: float = 1.0

    @property
    def text(self) -> str:
        if self.kind == "stack":
            return f"stack the {self.colour} cube on the {self.target} cube"
        return f"pick the {self.colour} cube and place it in the {self.target}"


@dataclass(frozen=True)
class Profile:
    """How one site's recordings look; differences between profiles make sites non-IID."""

    description: str
    tasks: tuple[TaskSpec, ...]
    frames: int  # nominal episode length at 30 fps (arm speed)
    brightness: float = 1.0
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    camera_shift: tuple[float, float] = (0.0, 0.0)  # top-camera shift (fraction of W, H)
    angle_range: tuple[float, float] = (-45.0, 45.0)  # cube bearing from the base (deg)
    radius_range: tuple[float, float] = (0.13, 0.22)  # cube distance from the base (m)
    operator_noise: float = 0.6  # leader-arm jitter (deg)


PROFILES: dict[str, Profile] = {
    "default": Profile(
        description="pick-place of a red, green or blue cube into the bin; 60 frames; "
        "neutral light; centred camera",
        tasks=(
            TaskSpec("pick_place", "red", "bin"),
            TaskSpec("pick_place", "green", "bin"),
            TaskSpec("pick_place", "blue", "bin"),
        ),
        frames=60,
    ),
    "lab-a": Profile(
        description="fast arm (45 frames), mostly red cubes into the bin, objects on the "
        "right half of the table, bright warm light",
        tasks=(
            TaskSpec("pick_place", "red", "bin", 0.7),
            TaskSpec("pick_place", "green", "bin", 0.3),
        ),
        frames=45,
        brightness=1.15,
        colour_cast=(1.08, 1.0, 0.88),
        angle_range=(-45.0, 5.0),
        operator_noise=0.4,
    ),
    "lab-b": Profile(
        description="slow arm (80 frames), mostly stacking blue on yellow, dim cool light, "
        "camera shifted right/up",
        tasks=(
            TaskSpec("stack", "blue", "yellow", 0.7),
            TaskSpec("pick_place", "blue", "bin", 0.3),
        ),
        frames=80,
        brightness=0.75,
        colour_cast=(0.9, 1.0, 1.12),
        camera_shift=(0.06, -0.04),
        operator_noise=0.9,
    ),
    "lab-c": Profile(
        description="left/right bins by colour (green left, blue right), 64 frames, greenish "
        "light, camera shifted left/down, objects on the left half",
        tasks=(
            TaskSpec("pick_place", "green", "left bin"),
            TaskSpec("pick_place", "blue", "right bin"),
        ),
        frames=64,
        brightness=0.95,
        colour_cast=(0.95, 1.08, 0.95),
        camera_shift=(-0.05, 0.03),
        angle_range=(-5.0, 45.0),
    ),
}
