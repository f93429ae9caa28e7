"""Synthetic SO-100 pick-and-place datasets in the real LeRobot v3.0 format.

The generator scripts a 6-joint SO-100 arm through reach → grasp → lift → move → place →
release with minimum-jerk interpolation between joint-space waypoints, renders a small
numpy scene for a top and a wrist camera, and writes the episodes with lerobot's own
``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize``.

The data are *learnable*: the action at frame t is the operator's (leader-arm) target,
which depends on the phase of the episode and on the cube position that varies per
episode and is visible in both images; the follower state lags the action. A policy
that looks at images and state can therefore drive its loss down.

Joint units follow lerobot's SO-100 follower: degrees for the five arm joints and
0–100 (closed–open) for ``gripper.pos``.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasite.training.dataset import (
    CONTRIBUTOR_FEATURE,
    SO100_JOINT_NAMES,
    write_contributors,
)

__all__ = [
    "CAMERAS",
    "FPS",
    "PROFILES",
    "ROBOT_TYPE",
    "Profile",
    "TaskSpec",
    "contributor_pseudonym",
    "generate_so100",
    "so100_features",
]

FPS = 30
ROBOT_TYPE = "so100"
CAMERAS = ("observation.images.top", "observation.images.wrist")

# Kinematics (metres): shoulder height, upper arm, forearm, wrist-to-fingertip.
_BASE_H, _L1, _L2, _L3 = 0.10, 0.13, 0.14, 0.10
_CUBE = 0.025  # cube edge (m)
# Calibration offsets: joint reading = geometric angle - offset (keeps readings within ±100).
_OFFSET = np.array([0.0, 0.0, 60.0, 80.0, 0.0, 0.0])
_GRIP_OPEN, _GRIP_CUBE, _GRIP_REST = 70.0, 12.0, 30.0
# Segment fractions of an episode: reach, descend, grasp, lift, move, place, release, retreat.
_SEGMENTS = (0.22, 0.10, 0.08, 0.10, 0.22, 0.10, 0.08, 0.10)
_MIN_SEGMENT_FRAMES = 2
MIN_FRAMES_PER_EPISODE = _MIN_SEGMENT_FRAMES * len(_SEGMENTS)

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35),
    "green": (40, 175, 60),
    "blue": (40, 70, 215),
    "yellow": (230, 205, 40),
}
# Table-plane positions (x forward, y left) of the drop zones.
_BINS: dict[str, tuple[float, float]] = {
    "bin": (0.10, -0.17),
    "right bin": (0.10, -0.17),
    "left bin": (0.10, 0.17),
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a profile's mix: ``kind`` is "pick_place" or "stack"."""

    kind: str
    colour: str
    target: str  # a key of _BINS for pick_place, a cube colour for stack
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


def so100_features(image_size: tuple[int, int] = (96, 128), video: bool = False) -> dict:
    """The LeRobot feature dict of a generated dataset (without lerobot's default features)."""
    h, w = image_size
    joints = {"dtype": "float32", "shape": (6,), "names": list(SO100_JOINT_NAMES)}
    cam = {
        "dtype": "video" if video else "image",
        "shape": (h, w, 3),
        "names": ["height", "width", "channels"],
    }
    features: dict = {"observation.state": dict(joints), "action": dict(joints)}
    for key in CAMERAS:
        features[key] = dict(cam)
    features[CONTRIBUTOR_FEATURE] = {"dtype": "int64", "shape": (1,), "names": None}
    return features


# ---------------------------------------------------------------- kinematics


def _ik(x: float, y: float, z: float, gripper: float) -> np.ndarray:
    """Joint targets putting the fingertip at (x, y, z) with the gripper pointing down."""
    pan = math.degrees(math.atan2(y, x))
    r = math.hypot(x, y)
    dx, dz = r, z + _L3 - _BASE_H
    d = min(math.hypot(dx, dz), 0.995 * (_L1 + _L2))
    cos_e = (d * d - _L1 * _L1 - _L2 * _L2) / (2 * _L1 * _L2)
    elbow = math.acos(max(-1.0, min(1.0, cos_e)))
    alpha = math.atan2(dx, dz)
    lift = alpha - math.atan2(_L2 * math.sin(elbow), _L1 + _L2 * math.cos(elbow))
    lift_d, elbow_d = math.degrees(lift), math.degrees(elbow)
    wrist_flex = 180.0 - lift_d - elbow_d
    q = np.array([pan, lift_d, elbow_d, wrist_flex, 0.3 * pan, gripper], dtype=np.float64)
    return q - _OFFSET


def _fk(q: np.ndarray) -> np.ndarray:
    """Top-view (x, y) of elbow, wrist and fingertip, plus fingertip height: shape (7,)."""
    g = q + _OFFSET
    pan, a1 = math.radians(g[0]), math.radians(g[1])
    a2 = a1 + math.radians(g[2])
    a3 = a2 + math.radians(g[3])
    r1, z1 = _L1 * math.sin(a1), _BASE_H + _L1 * math.cos(a1)
    r2, z2 = r1 + _L2 * math.sin(a2), z1 + _L2 * math.cos(a2)
    r3, z3 = r2 + _L3 * math.sin(a3), z2 + _L3 * math.cos(a3)
    c, s = math.cos(pan), math.sin(pan)
    return np.array([r1 * c, r1 * s, r2 * c, r2 * s, r3 * c, r3 * s, z3])


# ---------------------------------------------------------------- rendering


class _View:
    """Maps table-plane metres to pixels for one camera."""

    def __init__(self, h: int, w: int, cx: float, cy: float, half: float, shift=(0.0, 0.0)):
        self.h, self.w = h, w
        self.scale = h / (2.0 * half)
        self.u0 = w / 2.0 + shift[0] * w
        self.v0 = h / 2.0 + shift[1] * h
        self.cx, self.cy = cx, cy

    def px(self, x: float | np.ndarray, y: float | np.ndarray):
        return self.u0 + (self.cy - y) * self.scale, self.v0 + (self.cx - x) * self.scale

    def rect(self, img: np.ndarray, x: float, y: float, half_m: float, colour) -> None:
        u, v = self.px(x, y)
        r = max(1.0, half_m * self.scale)
        u0, u1 = max(0, int(u - r)), min(self.w, int(u + r) + 1)
        v0, v1 = max(0, int(v - r)), min(self.h, int(v + r) + 1)
        if u0 < u1 and v0 < v1:
            img[v0:v1, u0:u1] = colour

    def outline(self, img: np.ndarray, x: float, y: float, half_m: float, colour, t=2) -> None:
        u, v = self.px(x, y)
        r = half_m * self.scale
        t = max(1, int(t * self.h / 96))
        u0, u1 = int(u - r), int(u + r)
        v0, v1 = int(v - r), int(v + r)
        for a0, a1, b0, b1 in (
            (v0, v0 + t, u0, u1),
            (v1 - t, v1, u0, u1),
            (v0, v1, u0, u0 + t),
            (v0, v1, u1 - t, u1),
        ):
            a0, a1 = max(0, a0), min(self.h, a1)
            b0, b1 = max(0, b0), min(self.w, b1)
            if a0 < a1 and b0 < b1:
                img[a0:a1, b0:b1] = colour

    def line(self, img: np.ndarray, p0, p1, colour, width: int = 2) -> None:
        u0, v0 = self.px(*p0)
        u1, v1 = self.px(*p1)
        n = int(max(abs(u1 - u0), abs(v1 - v0))) + 2
        t = np.linspace(0.0, 1.0, n)
        uu = np.round(u0 + (u1 - u0) * t).astype(int)
        vv = np.round(v0 + (v1 - v0) * t).astype(int)
        width = max(1, int(width * self.h / 96))
        for du in range(width):
            for dv in range(width):
                a, b = vv + dv, uu + du
                ok = (a >= 0) & (a < self.h) & (b >= 0) & (b < self.w)
                img[a[ok], b[ok]] = colour


def _table(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Wood-coloured table with a soft vertical gradient (cheap to PNG-encode)."""
    base = np.array([170.0, 145.0, 110.0]) * rng.uniform(0.95, 1.05)
    grad = np.linspace(0.9, 1.05, h)[:, None, None]
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = np.clip(base * grad, 0, 255).astype(np.uint8)
    return img


@dataclass
class _Scene:
    cube_colour: tuple[int, int, int]
    target_xy: tuple[float, float]
    stack_colour: tuple[int, int, int] | None  # the base cube when stacking
    light: np.ndarray  # per-channel multiplier


def _render(
    view: _View,
    background: np.ndarray,
    scene: _Scene,
    q: np.ndarray,
    cube: np.ndarray,
    wrist: bool,
) -> np.ndarray:
    img = background.copy()
    tx, ty = scene.target_xy
    if scene.stack_colour is None:
        view.outline(img, tx, ty, 0.035, (60, 60, 60))
    else:
        view.rect(img, tx, ty, _CUBE / 2, scene.stack_colour)
    kin = _fk(q)
    grip = float(np.clip(q[5], 0.0, 100.0))
    if not wrist:
        view.line(img, (0.0, 0.0), (kin[0], kin[1]), (90, 90, 95), 3)
        view.line(img, (kin[0], kin[1]), (kin[2], kin[3]), (110, 110, 115), 3)
        view.line(img, (kin[2], kin[3]), (kin[4], kin[5]), (130, 130, 135), 2)
        view.rect(img, 0.0, 0.0, 0.025, (50, 50, 55))
    half = (_CUBE / 2) * (1.0 + 3.0 * cube[2])  # closer to the camera → bigger
    view.rect(img, cube[0], cube[1], half, scene.cube_colour)
    if wrist:
        # Fingers at the bottom of the wrist image, gap ∝ opening.
        h, w = img.shape[:2]
        gap = int((0.05 + 0.35 * grip / 100.0) * w)
        fw, fh = max(2, w // 12), max(3, h // 4)
        c = w // 2
        img[h - fh :, max(0, c - gap // 2 - fw) : c - gap // 2] = (30, 30, 30)
        img[h - fh :, c + gap // 2 : min(w, c + gap // 2 + fw)] = (30, 30, 30)
    else:
        gap_m = 0.006 + 0.03 * grip / 100.0
        c, s = math.cos(math.radians(q[0])), math.sin(math.radians(q[0]))
        for sign in (-1.0, 1.0):
            view.rect(img, kin[4] - sign * s * gap_m, kin[5] + sign * c * gap_m, 0.005, (25, 25, 25))
    return np.clip(img * scene.light, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- trajectories


def _min_jerk(t: np.ndarray) -> np.ndarray:
    return 10 * t**3 - 15 * t**4 + 6 * t**5


def _segment_lengths(total: int, rng: np.random.Generator) -> list[int]:
    frac = np.array(_SEGMENTS) * rng.uniform(0.85, 1.15, len(_SEGMENTS))
    spare = total - _MIN_SEGMENT_FRAMES * len(_SEGMENTS)
    raw = frac / frac.sum() * spare
    lengths = np.floor(raw).astype(int)
    order = np.argsort(-(raw - lengths))
    lengths[order[: spare - int(lengths.sum())]] += 1
    return [int(n) + _MIN_SEGMENT_FRAMES for n in lengths]


def _pick_task(profile: Profile, rng: np.random.Generator) -> TaskSpec:
    weights = np.array([t.weight for t in profile.tasks], dtype=float)
    return profile.tasks[int(rng.choice(len(weights), p=weights / weights.sum()))]


def _polar(rng: np.random.Generator, profile: Profile) -> tuple[float, float]:
    ang = math.radians(rng.uniform(*profile.angle_range))
    rad = rng.uniform(*profile.radius_range)
    return rad * math.cos(ang), rad * math.sin(ang)


@dataclass
class _Episode:
    task: str
    states: np.ndarray  # (T, 6) float32
    actions: np.ndarray  # (T, 6) float32
    cubes: np.ndarray  # (T, 3) cube centre x, y, z per frame
    scene: _Scene


def _episode(profile: Profile, frames: int, noise: float, rng: np.random.Generator) -> _Episode:
    """Script one pick-and-place (or stacking) demonstration."""
    spec = _pick_task(profile, rng)
    obj = _polar(rng, profile)
    if spec.kind == "stack":
        while True:  # base cube far enough from the picked one
            target = _polar(rng, profile)
            if math.dist(obj, target) > 0.07:
                break
        place_z = 0.03 + _CUBE
    else:
        target = _BINS[spec.target]
        place_z = 0.03
    home = _ik(0.12, 0.0, 0.16, _GRIP_REST)
    ox, oy = obj
    tx, ty = target
    way = [
        home,
        _ik(ox, oy, 0.07, _GRIP_OPEN),
        _ik(ox, oy, 0.012, _GRIP_OPEN),
        _ik(ox, oy, 0.012, _GRIP_CUBE),
        _ik(ox, oy, 0.09, _GRIP_CUBE),
        _ik(tx, ty, 0.09 + (_CUBE if spec.kind == "stack" else 0.0), _GRIP_CUBE),
        _ik(tx, ty, place_z, _GRIP_CUBE),
        _ik(tx, ty, place_z, _GRIP_OPEN),
        _ik(tx, ty, 0.10, 40.0),
    ]
    lengths = _segment_lengths(frames, rng)
    ref = []
    for k, n in enumerate(lengths):
        s = _min_jerk(np.arange(1, n + 1) / n)[:, None]
        ref.append(way[k] + (way[k + 1] - way[k]) * s)
    q_ref = np.concatenate(ref)  # (T, 6) leader-arm targets
    # Operator jitter: smooth AR(1) noise on the leader arm.
    jitter = np.zeros_like(q_ref)
    e = np.zeros(6)
    for t in range(frames):
        e = 0.8 * e + rng.normal(0.0, noise, 6) * np.array([1, 1, 1, 1, 1, 1.5])
        jitter[t] = e
    actions = q_ref + jitter
    # The follower tracks the previous command with a lag.
    states = np.empty_like(actions)
    states[0] = home + rng.normal(0.0, 2.0, 6)
    for t in range(1, frames):
        states[t] = states[t - 1] + 0.65 * (actions[t - 1] - states[t - 1])
        states[t] += rng.normal(0.0, 0.15, 6)
    states[:, 5] = np.clip(states[:, 5], 0.0, 100.0)
    actions[:, 5] = np.clip(actions[:, 5], 0.0, 100.0)
    # Cube: on the table, carried from lift to release, then at the target.
    bounds = np.cumsum([0, *lengths])
    lift_start, release_start = bounds[3], bounds[6]
    cubes = np.empty((frames, 3))
    for t in range(frames):
        if t < lift_start:
            cubes[t] = (ox, oy, _CUBE / 2)
        elif t < release_start:
            tip = _fk(states[t])
            cubes[t] = (tip[4], tip[5], max(_CUBE / 2, tip[6]))
        else:
            cubes[t] = (tx, ty, place_z - 0.03 + _CUBE / 2)
    light = np.array(profile.colour_cast) * profile.brightness * rng.uniform(0.95, 1.05)
    scene = _Scene(
        cube_colour=_COLOURS[spec.colour],
        target_xy=(tx, ty),
        stack_colour=_COLOURS[spec.target] if spec.kind == "stack" else None,
        light=light,
    )
    return _Episode(spec.text, states.astype(np.float32), actions.astype(np.float32), cubes, scene)


def contributor_pseudonym(seed: int, profile: str, index: int) -> str:
    """Pseudonym of generated contributor ``index``, e.g. ``"c-3f9a1b2c04"`` (stable under the seed)."""
    digest = hashlib.sha256(f"fedsilo-contributor:{seed}:{profile}:{index}".encode()).hexdigest()
    return f"c-{digest[:10]}"


def _assign_contributors(episodes: int, contributors: int, rng: np.random.Generator) -> list[int]:
    """Every contributor records at least one episode; the rest are skewed at random."""
    share = rng.dirichlet(np.full(contributors, 2.0))
    rest = rng.choice(contributors, size=episodes - contributors, p=share)
    owners = np.concatenate([np.arange(contributors), rest])
    return [int(k) for k in rng.permutation(owners)]


def generate_so100(
    root: Path,
    episodes: int,
    contributors: int,
    seed: int,
    profile: str = "default",
    image_size: tuple[int, int] = (96, 128),
    video: bool = False,
    frames_per_episode: int | None = None,
    repo_id: str = "fedsilo/so100-synthetic",
    progress: bool = False,
) -> Path:
    """Write a synthetic SO-100 dataset (LeRobot v3.0) at ``root`` and return ``root``.

    ``root`` must not exist. Episodes are spread over ``contributors`` pseudonymous people
    (each records at least one); the per-frame ``contributor.id`` feature holds the person's
    index and ``meta/fedsilo_contributors.json`` maps episode_index → pseudonym. The same
    arguments give identical state/action arrays. Raises ``ValueError`` for bad arguments
    and ``FileExistsError`` if ``root`` exists.
    """
    root = Path(root)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 1 <= contributors <= episodes:
        raise ValueError(f"contributors must be between 1 and episodes ({episodes}), got {contributors}")
    h, w = image_size
    if h < 16 or w < 16:
        raise ValueError(f"image_size must be at least 16x16, got {h}x{w}")
    prof = PROFILES[profile]
    frames = prof.frames if frames_per_episode is None else int(frames_per_episode)
    if frames < MIN_FRAMES_PER_EPISODE:
        raise ValueError(f"frames_per_episode must be >= {MIN_FRAMES_PER_EPISODE}, got {frames}")
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose a new folder or delete it first")

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.utils.utils import SuppressProgressBars

    owners = _assign_contributors(episodes, contributors, np.random.default_rng([seed, 1]))
    pseudonyms = [contributor_pseudonym(seed, profile, k) for k in range(contributors)]
    # Each person has their own steadiness on the leader arm.
    steadiness = np.random.default_rng([seed, 2]).uniform(0.6, 1.4, contributors)

    ds = LeRobotDataset.create(
        repo_id=repo_id,
        fps=FPS,
        features=so100_features((h, w), video),
        root=root,
        robot_type=ROBOT_TYPE,
        use_videos=video,
        image_writer_threads=0,
        video_backend="pyav",
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"so100 {profile}", unit="ep")
    try:
        with SuppressProgressBars():
            for ep in range(episodes):
                rng = np.random.default_rng([seed, 100 + ep])
                owner = owners[ep]
                e = _episode(prof, frames, prof.operator_noise * steadiness[owner], rng)
                top = _View(h, w, 0.13, 0.0, 0.17, prof.camera_shift)
                top_bg = _table(h, w, rng)
                wrist_bg = _table(h, w, rng)
                cid = np.array([owner], dtype=np.int64)
                for t in range(frames):
                    tip = _fk(e.states[t])
                    zoom = 0.03 + 0.35 * max(tip[6], 0.0)
                    wrist = _View(h, w, tip[4] + 0.4 * zoom, tip[5], zoom)
                    ds.add_frame(
                        {
                            "observation.state": e.states[t],
                            "action": e.actions[t],
                            CAMERAS[0]: _render(top, top_bg, e.scene, e.states[t], e.cubes[t], False),
                            CAMERAS[1]: _render(wrist, wrist_bg, e.scene, e.states[t], e.cubes[t], True),
                            CONTRIBUTOR_FEATURE: cid,
                            "task": e.task,
                        }
                    )
                ds.save_episode(parallel_encoding=False)
                if bar is not None:
                    bar.update(1)
    finally:
        ds.finalize()
        if bar is not None:
            bar.close()
    write_contributors(
        root,
        {ep: pseudonyms[owners[ep]] for ep in range(episodes)},
        extra={"generator": "fedsilo.so100", "profile": profile},
    )
    return root
