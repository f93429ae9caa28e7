"""The scripted scene: SO-100 arm kinematics (joint readings ↔ fingertip position) and a small
numpy renderer of the table, cube, target and arm for a top and a wrist camera."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CUBE", "Scene", "View", "fk", "ik", "render", "table"]

# Kinematics (metres): shoulder height, upper arm, forearm, wrist-to-fingertip.
_BASE_H, _L1, _L2, _L3 = 0.10, 0.13, 0.14, 0.10
CUBE = 0.025  # cube edge (m)
# Calibration offsets: joint reading = geometric angle - offset (keeps readings within ±100).
_OFFSET = np.array([0.0, 0.0, 60.0, 80.0, 0.0, 0.0])


# ---------------------------------------------------------------- kinematics


def ik(x: float, y: float, z: float, gripper: float) -> np.ndarray:
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


def fk(q: np.ndarray) -> np.ndarray:
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


class View:
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


def table(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Wood-coloured table with a soft vertical gradient (cheap to PNG-encode)."""
    base = np.array([170.0, 145.0, 110.0]) * rng.uniform(0.95, 1.05)
    grad = np.linspace(0.9, 1.05, h)[:, None, None]
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = np.clip(base * grad, 0, 255).astype(np.uint8)
    return img


@dataclass
class Scene:
    cube_colour: tuple[int, int, int]
    target_xy: tuple[float, float]
    stack_colour: tuple[int, int, int] | None  # the base cube when stacking
    light: np.ndarray  # per-channel multiplier


def render(
    view: View,
    background: np.ndarray,
    scene: Scene,
    q: np.ndarray,
    cube: np.ndarray,
    wrist: bool,
) -> np.ndarray:
    img = background.copy()
    tx, ty = scene.target_xy
    if scene.stack_colour is None:
        view.outline(img, tx, ty, 0.035, (60, 60, 60))
    else:
        view.rect(img, tx, ty, CUBE / 2, scene.stack_colour)
    kin = fk(q)
    grip = float(np.clip(q[5], 0.0, 100.0))
    if not wrist:
        view.line(img, (0.0, 0.0), (kin[0], kin[1]), (90, 90, 95), 3)
        view.line(img, (kin[0], kin[1]), (kin[2], kin[3]), (110, 110, 115), 3)
        view.line(img, (kin[2], kin[3]), (kin[4], kin[5]), (130, 130, 135), 2)
        view.rect(img, 0.0, 0.0, 0.025, (50, 50, 55))
    half = (CUBE / 2) * (1.0 + 3.0 * cube[2])  # closer to the camera → bigger
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
