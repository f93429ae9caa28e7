"""Registered datasets: validation and registration with a privacy budget, and their public view."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction

from audit import trail
from common.errors import Conflict, ServiceError
from datasite.models import Dataset
from datasite.training.dataset import DatasetError, mock_preview, validate_dataset


def register_dataset(name: str, root: str | Path, epsilon_max: float, delta: float, user=None) -> Dataset:
    """Validate a LeRobot SO-100 dataset folder and register it with its privacy budget."""
    if Dataset.objects.filter(name=name).exists():
        raise Conflict(f"a dataset named {name!r} is already registered")
    if not (math.isfinite(epsilon_max) and epsilon_max > 0):
        raise ServiceError("epsilon_max must be a positive number")
    if not 0 < delta < 1:
        raise ServiceError("delta must be between 0 and 1")
    try:
        summary = validate_dataset(Path(root))
    except DatasetError as exc:
        raise ServiceError(str(exc)) from exc
    with transaction.atomic():
        ds = Dataset.objects.create(
            name=name,
            root=summary.root,
            repo_id=summary.repo_id,
            summary=summary.to_dict(),
            mock=mock_preview(summary),
            num_episodes=summary.num_episodes,
            num_frames=summary.num_frames,
            epsilon_max=epsilon_max,
            delta=delta,
            registered_by=user,
        )
        trail.record(
            "dataset.registered",
            user,
            f"dataset:{name}",
            {
                "root": summary.root,
                "episodes": summary.num_episodes,
                "frames": summary.num_frames,
                "epsilon_max": epsilon_max,
                "delta": delta,
            },
        )
    return ds


def public_dataset(ds: Dataset) -> dict[str, Any]:
    """What other parties may see: schema, counts, statistics *shape*, the mock. No values."""
    s = ds.summary
    return {
        "name": ds.name,
        "robot_type": s["robot_type"],
        "fps": s["fps"],
        "num_episodes": ds.num_episodes,
        "num_frames": ds.num_frames,
        "num_contributors": len(set(s["contributors"].values())),
        "features": s["features"],
        "cameras": s["cameras"],
        "stats_shape": {k: {n: list(np.shape(v)) for n, v in by.items()} for k, by in s["stats"].items()},
        "mock": ds.mock,
    }
