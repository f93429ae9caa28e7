"""Per-round checkpoints of a study: global weights, server state, metrics.

``<data>/studies/<id>/checkpoints/round-<r>.safetensors`` holds the global weights after
round r (round 0: the initial weights); ``round-<r>.state.safetensors`` the strategy's state
tensors with its JSON metadata in the header. Files are written atomically, so a crash never
leaves a half checkpoint: the latest complete one is where a restarted orchestrator resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

from common.files import atomic_write
from orchestrator.tensors import Arrays, from_bytes, to_bytes
from privacy.strategies import ServerState


def study_dir(study_id: str) -> Path:
    path = Path(settings.DATA_DIR) / "studies" / study_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _paths(study_id: str, round_number: int) -> tuple[Path, Path]:
    folder = study_dir(study_id) / "checkpoints"
    folder.mkdir(exist_ok=True)
    return (
        folder / f"round-{round_number:05d}.safetensors",
        folder / f"round-{round_number:05d}.state.safetensors",
    )


def save(study_id: str, round_number: int, weights: Arrays, state: ServerState) -> Path:
    weights_path, state_path = _paths(study_id, round_number)
    tensors, meta = state.to_checkpoint()
    atomic_write(state_path, to_bytes(tensors, {"state": json.dumps(meta)}))
    atomic_write(weights_path, to_bytes(weights, {"round": str(round_number)}))
    return weights_path


def load(study_id: str, round_number: int) -> tuple[Arrays, ServerState]:
    from safetensors import safe_open

    weights_path, state_path = _paths(study_id, round_number)
    weights = from_bytes(weights_path.read_bytes())
    with safe_open(state_path, framework="numpy") as fh:
        meta = json.loads(fh.metadata()["state"])
    return weights, ServerState.from_checkpoint(from_bytes(state_path.read_bytes()), meta)


def weights_bytes(study_id: str, round_number: int) -> bytes:
    return _paths(study_id, round_number)[0].read_bytes()


def exists(study_id: str, round_number: int) -> bool:
    return all(p.exists() for p in _paths(study_id, round_number))
