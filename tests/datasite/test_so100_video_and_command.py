"""Synthetic SO-100 datasets with video cameras, and the ``generate_so100`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest
from django.core.management import CommandError, call_command

from datasite.datagen import generate_so100
from datasite.training.dataset import load_dataset, validate_dataset

REPO = Path(__file__).resolve().parents[2]


def test_video_generation_with_pyav(tmp_path):
    root = generate_so100(
        tmp_path / "v", episodes=2, contributors=2, seed=2, video=True, frames_per_episode=20
    )
    summary = validate_dataset(root)
    assert summary.features["observation.images.top"]["dtype"] == "video"
    assert (root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4").is_file()
    ds = load_dataset(root, episodes=[1])
    item = ds[5]
    assert int(item["episode_index"]) == 1
    assert item["observation.images.wrist"].shape == (3, 96, 128)
    assert float(item["observation.images.top"].mean()) > 0.2  # decoded, not blank


def test_management_command(tmp_path):
    root = tmp_path / "cmd"
    call_command(
        "generate_so100",
        "--root",
        str(root),
        "--episodes",
        "2",
        "--contributors",
        "2",
        "--seed",
        "1",
        "--profile",
        "lab-c",
        "--image-size",
        "48x64",
        "--frames-per-episode",
        "20",
    )
    summary = validate_dataset(root)
    assert summary.features["observation.images.top"]["shape"] == [48, 64, 3]
    assert len(set(summary.contributors.values())) == 2
    with pytest.raises(CommandError, match="already exists"):
        call_command(
            "generate_so100", "--root", str(root), "--episodes", "1", "--contributors", "1", "--seed", "1"
        )
    with pytest.raises(CommandError, match="HxW"):
        call_command(
            "generate_so100",
            "--root",
            str(tmp_path / "x"),
            "--episodes",
            "1",
            "--contributors",
            "1",
            "--seed",
            "1",
            "--image-size",
            "96by128",
        )
    with pytest.raises(CommandError, match="contributors"):
        call_command(
            "generate_so100",
            "--root",
            str(tmp_path / "y"),
            "--episodes",
            "1",
            "--contributors",
            "3",
            "--seed",
            "1",
        )
    assert not (tmp_path / "y").exists()


def test_management_command_exits_nonzero_with_one_line(tmp_path):
    (tmp_path / "taken").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "generate_so100",
            "--root",
            str(tmp_path / "taken"),
            "--episodes",
            "1",
            "--contributors",
            "1",
            "--seed",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {tmp_path / 'taken'} already exists; choose a new --root or delete it first"
    ]
    shutil.rmtree(tmp_path / "taken")
