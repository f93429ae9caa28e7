"""Synthetic SO-100 pick-and-place datasets in the real LeRobot v3.0 format.

The generator scripts a 6-joint SO-100 arm through reach → grasp → lift → move → place →
release (:mod:`.scripted`), renders a small numpy scene for a top and a wrist camera
(:mod:`.scene`), and writes the episodes with lerobot's own
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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasite.datagen.profiles import PROFILES
from datasite.datagen.scene import View, fk, render, table
from datasite.datagen.scripted import MIN_FRAMES_PER_EPISODE, script_episode
from datasite.training.dataset import (
    CONTRIBUTOR_FEATURE,
    SO100_JOINT_NAMES,
    write_contributors,
)
from datasite.training.runtime import hub_offline

__all__ = ["CAMERAS", "FPS", "ROBOT_TYPE", "contributor_pseudonym", "generate_so100", "so100_features"]

FPS = 30
ROBOT_TYPE = "so100"
CAMERAS = ("observation.images.top", "observation.images.wrist")


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

    hub_offline()
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
        bar = tqdm(total=episodes, desc=f"so100 {profile}", unit="ep")
    try:
        with SuppressProgressBars():
            for ep in range(episodes):
                rng = np.random.default_rng([seed, 100 + ep])
                owner = owners[ep]
                e = script_episode(prof, frames, prof.operator_noise * steadiness[owner], rng)
                top = View(h, w, 0.13, 0.0, 0.17, prof.camera_shift)
                top_bg = table(h, w, rng)
                wrist_bg = table(h, w, rng)
                cid = np.array([owner], dtype=np.int64)
                for t in range(frames):
                    tip = fk(e.states[t])
                    zoom = 0.03 + 0.35 * max(tip[6], 0.0)
                    wrist = View(h, w, tip[4] + 0.4 * zoom, tip[5], zoom)
                    ds.add_frame(
                        {
                            "observation.state": e.states[t],
                            "action": e.actions[t],
                            CAMERAS[0]: render(top, top_bg, e.scene, e.states[t], e.cubes[t], False),
                            CAMERAS[1]: render(wrist, wrist_bg, e.scene, e.states[t], e.cubes[t], True),
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
