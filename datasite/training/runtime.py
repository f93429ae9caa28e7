"""What every training process shares: the hub kept offline, the default device, seeded RNG.

Importing this module is cheap: torch is imported when a function needs it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["cuda_indices", "default_device", "hub_offline", "seeded"]


def hub_offline() -> None:
    """Make sure nothing below can reach a hub: call it before lerobot or transformers load."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - lerobot depends on it
        pass


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device index of ``device`` as a list (empty off CUDA), for :func:`seeded`."""
    return [device.index or 0] if device.type == "cuda" else []


@contextlib.contextmanager
def seeded(seed: int, devices: list[int]) -> Iterator[None]:
    """Seed torch's global RNG without leaking the state: the caller's RNG state (CPU and the
    CUDA ``devices``) is restored on exit."""
    import torch

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
