"""``manage.py generate_so100``: write a synthetic SO-100 LeRobot v3.0 dataset."""

from __future__ import annotations

import re
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasite.datagen import PROFILES, generate_so100


def parse_image_size(text: str) -> tuple[int, int]:
    """``"96x128"`` → ``(96, 128)`` (height × width)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise CommandError(f"--image-size must be HxW such as 96x128 or 480x640, got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if not (16 <= h <= 2160 and 16 <= w <= 3840):
        raise CommandError(f"--image-size {h}x{w} is out of range (16x16 to 2160x3840)")
    return h, w


class Command(BaseCommand):
    help = "Generate a synthetic SO-100 pick-and-place dataset in LeRobot v3.0 format."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--root", required=True, help="new folder to create")
        parser.add_argument("--episodes", type=int, required=True)
        parser.add_argument("--contributors", type=int, required=True)
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--profile", default="default", help=f"one of {sorted(PROFILES)}")
        parser.add_argument("--image-size", default="96x128", help="HxW, e.g. 96x128 or 480x640")
        parser.add_argument("--frames-per-episode", type=int, default=None)
        parser.add_argument("--repo-id", default="fedsilo/so100-synthetic")
        parser.add_argument("--video", action="store_true", help="store cameras as MP4 (pyav)")

    def handle(self, *args, **opts) -> None:
        root = Path(opts["root"])
        if root.exists():
            raise CommandError(f"{root} already exists; choose a new --root or delete it first")
        if opts["profile"] not in PROFILES:
            raise CommandError(
                f"unknown --profile {opts['profile']!r}; choose one of {', '.join(sorted(PROFILES))}"
            )
        size = parse_image_size(opts["image_size"])
        try:
            generate_so100(
                root,
                episodes=opts["episodes"],
                contributors=opts["contributors"],
                seed=opts["seed"],
                profile=opts["profile"],
                image_size=size,
                video=opts["video"],
                frames_per_episode=opts["frames_per_episode"],
                repo_id=opts["repo_id"],
                progress=True,
            )
        except (ValueError, FileExistsError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(f"wrote {opts['episodes']} episodes ({opts['profile']}) to {root}")
        )
