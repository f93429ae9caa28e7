"""Dataset tools: synthetic SO-100 datasets in the LeRobot v3.0 format, for tests, benchmarks
and the demo. The scripted generator (:mod:`.so100`) drives the arm through scripted
demonstrations (:mod:`.scripted`) in a numpy scene (:mod:`.scene`) and records them the way a
site's profile (:mod:`.profiles`) says."""

from datasite.datagen.profiles import PROFILES, Profile, TaskSpec
from datasite.datagen.so100 import (
    CAMERAS,
    FPS,
    ROBOT_TYPE,
    contributor_pseudonym,
    generate_so100,
    so100_features,
)

__all__ = [
    "CAMERAS",
    "FPS",
    "PROFILES",
    "ROBOT_TYPE",
    "Profile",
    "TaskSpec",
    "contributor_pseudonym",
    "generate_so100",
    "so100_features",
]
