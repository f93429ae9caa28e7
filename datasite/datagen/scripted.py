"""Scripted demonstrations: a 6-joint SO-100 arm driven through reach → grasp → lift → move →
place → release with minimum-jerk interpolation between joint-space waypoints.

The action at frame t is the operator's (leader-arm) target, which depends on the phase of the
episode and on the cube position that varies per episode; the follower state lags the action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasite.datagen.profiles import Profile, TaskSpec
from datasite.datagen.scene import CUBE, Scene, fk, ik

__all__ = ["BINS", "MIN_FRAMES_PER_EPISODE", "Episode", "script_episode"]

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
BINS: dict[str, tuple[float, float]] = {
    "bin": (0.10, -0.17),
    "right bin": (0.10, -0.17),
    "left bin": (0.10, 0.17),
}


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
class Episode:
    task: str
    states: np.ndarray  # (T, 6) float32
    actions: np.ndarray  # (T, 6) float32
    cubes: np.ndarray  # (T, 3) cube centre x, y, z per frame
    scene: Scene


def script_episode(profile: Profile, frames: int, noise: float, rng: np.random.Generator) -> Episode:
    """Script one pick-and-place (or stacking) demonstration."""
    spec = _pick_task(profile, rng)
    obj = _polar(rng, profile)
    if spec.kind == "stack":
        while True:  # base cube far enough from the picked one
            target = _polar(rng, profile)
            if math.dist(obj, target) > 0.07:
                break
        place_z = 0.03 + CUBE
    else:
        target = BINS[spec.target]
        place_z = 0.03
    home = ik(0.12, 0.0, 0.16, _GRIP_REST)
    ox, oy = obj
    tx, ty = target
    way = [
        home,
        ik(ox, oy, 0.07, _GRIP_OPEN),
        ik(ox, oy, 0.012, _GRIP_OPEN),
        ik(ox, oy, 0.012, _GRIP_CUBE),
        ik(ox, oy, 0.09, _GRIP_CUBE),
        ik(tx, ty, 0.09 + (CUBE if spec.kind == "stack" else 0.0), _GRIP_CUBE),
        ik(tx, ty, place_z, _GRIP_CUBE),
        ik(tx, ty, place_z, _GRIP_OPEN),
        ik(tx, ty, 0.10, 40.0),
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
            cubes[t] = (ox, oy, CUBE / 2)
        elif t < release_start:
            tip = fk(states[t])
            cubes[t] = (tip[4], tip[5], max(CUBE / 2, tip[6]))
        else:
            cubes[t] = (tx, ty, place_z - 0.03 + CUBE / 2)
    light = np.array(profile.colour_cast) * profile.brightness * rng.uniform(0.95, 1.05)
    scene = Scene(
        cube_colour=_COLOURS[spec.colour],
        target_xy=(tx, ty),
        stack_colour=_COLOURS[spec.target] if spec.kind == "stack" else None,
        light=light,
    )
    return Episode(spec.text, states.astype(np.float32), actions.astype(np.float32), cubes, scene)
