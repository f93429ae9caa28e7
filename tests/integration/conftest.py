"""Fixtures for federations of real node processes."""

import socket

import pytest

from datasite.datagen import generate_so100
from tests.availability import unavailable


@pytest.fixture(scope="session")
def so100_sources(tmp_path_factory):
    """Two non-IID SO-100 datasets generated once per session; sites get copies."""
    base = tmp_path_factory.mktemp("so100")
    return [
        generate_so100(
            base / profile, episodes=6, contributors=3, seed=i, profile=profile, image_size=(32, 40)
        )
        for i, profile in enumerate(("lab-a", "lab-b"))
    ]


def service_up(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require_service(port: int, name: str) -> None:
    if not service_up(port):
        unavailable(f"{name} is not answering on 127.0.0.1:{port}")
