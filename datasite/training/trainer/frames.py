"""The frames a site may train on: only the allowed episodes, read through lerobot, with
every item's episode checked and recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from datasite.training.dataset import load_dataset
from datasite.training.trainer.plan import is_int

__all__ = ["FrameSource", "check_episodes", "read_info"]


class FrameSource:
    """Frames of the allowed episodes only, read through lerobot, preprocessed per batch.

    Every item's ``episode_index`` is checked against the allowed set and recorded."""

    def __init__(self, root: Path, allowed: list[int], deltas: dict | None, preprocess: Any) -> None:
        self.allowed = set(allowed)
        self.ds = load_dataset(root, episodes=allowed, delta_timestamps=deltas)
        column = self.ds.hf_dataset.data.column("episode_index").to_pylist()
        self._rows: dict[int, list[int]] = {}
        for row, ep in enumerate(column):
            self._rows.setdefault(int(ep), []).append(row)
        stray = set(self._rows) - self.allowed
        if stray:
            raise RuntimeError(f"dataset returned frames of non-allowed episodes {sorted(stray)}")
        empty = sorted(self.allowed - set(self._rows))
        if empty:
            raise ValueError(f"episodes {empty} have no frames in {root}")
        self.episodes = sorted(self._rows)
        self.num_frames = len(column)
        self._read: set[int] = set()
        self._train_items = 0
        self._train_eps: set[int] = set()
        self.preprocess = preprocess

    def rows_of(self, episode: int) -> list[int]:
        return self._rows[episode]

    def random_rows(self, n: int, gen: torch.Generator) -> list[int]:
        if n <= self.num_frames:
            return torch.randperm(self.num_frames, generator=gen)[:n].tolist()
        return torch.randint(self.num_frames, (n,), generator=gen).tolist()

    def items(self, rows: list[int]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            item = self.ds[r]
            ep = int(item["episode_index"])
            if ep not in self.allowed:  # defence in depth: never train on withdrawn data
                raise RuntimeError(f"read a frame of non-allowed episode {ep}")
            self._read.add(ep)
            out.append(item)
        return out

    def batch(self, rows: list[int], train: bool = True) -> dict[str, Any]:
        """Collated and preprocessed (normalised, on the policy's device) batch of ``rows``."""
        from torch.utils.data import default_collate

        items = self.items(rows)
        if train:
            self._train_items += len(items)
            self._train_eps.update(int(i["episode_index"]) for i in items)
        return self.preprocess(default_collate(items))

    def counts(self) -> dict[str, int]:
        return {"frames_used": self._train_items, "episodes_used": len(self._train_eps)}

    def episodes_read(self) -> list[int]:
        return sorted(self._read)


def check_episodes(episodes: Any) -> list[int]:
    if not isinstance(episodes, list | tuple) or not episodes:
        raise ValueError("episodes must be a non-empty list of episode indices")
    if not all(is_int(e) and e >= 0 for e in episodes):
        raise ValueError(f"episodes must be non-negative integers, got {episodes!r}")
    return sorted({int(e) for e in episodes})


def read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
        return {"features": info["features"], "fps": info["fps"]}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{root} is not a LeRobot dataset ({path}: {exc})") from exc
