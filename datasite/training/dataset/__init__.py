"""SO-100 LeRobot v3.0 datasets at a datasite: validation, loading, contributors, mocks.

Every read of a dataset goes through lerobot's ``LeRobotDataset`` with the Hugging Face hub
offline (:mod:`.loading`), after the folder itself was checked (:mod:`.checks`), so a broken
folder gives a :class:`DatasetError` naming what is missing instead of a hub download attempt.

Validation policy (what "an SO-100 dataset" means here):

* ``meta/info.json`` with ``codebase_version`` "v3.0", episodes metadata, tasks and every
  data (and video) file that the episodes metadata points to.
* ``robot_type`` is one of :data:`ACCEPTED_ROBOT_TYPES` (``so100``/``so100_follower`` and the
  SO-101 revision ``so101``/``so101_follower``, which has the same six joints and motor
  names). A missing robot type is accepted with a warning (the joint schema decides); any
  other robot type is refused.
* ``observation.state`` and ``action`` exist, are float32 of shape (6,). Their names, when
  given, should be the six SO-100 joints; other names of the right shape are accepted with
  a warning saying the SO-100 joint order is assumed.
* ``fps`` is positive (a warning when it is not 30). Cameras (any ``observation.images.*``)
  are optional and may have any name; extra features are kept.

Contributors (:mod:`.contributors`): ``meta/fedsilo_contributors.json`` maps episode_index →
pseudonym; without it the per-frame int64 ``contributor.id`` feature gives
``contributor-<id>``; without either, every episode belongs to :data:`UNKNOWN_CONTRIBUTOR`.

Mocks (:mod:`.mocks`) carry a real dataset's schema and nothing of its values.

lerobot and torch are imported lazily (5–8 s), so importing this package is cheap.
"""

from datasite.training.dataset.contributors import (
    episode_contributors,
    episodes_for_contributors,
    write_contributors,
)
from datasite.training.dataset.loading import load_dataset, validate_dataset
from datasite.training.dataset.mocks import make_mock, mock_preview
from datasite.training.dataset.schema import (
    ACCEPTED_ROBOT_TYPES,
    CONTRIBUTOR_FEATURE,
    CONTRIBUTORS_FILE,
    JOINT_RANGES,
    SO100_JOINT_NAMES,
    UNKNOWN_CONTRIBUTOR,
    DatasetError,
    DatasetSummary,
)

__all__ = [
    "ACCEPTED_ROBOT_TYPES",
    "CONTRIBUTORS_FILE",
    "CONTRIBUTOR_FEATURE",
    "JOINT_RANGES",
    "SO100_JOINT_NAMES",
    "UNKNOWN_CONTRIBUTOR",
    "DatasetError",
    "DatasetSummary",
    "episode_contributors",
    "episodes_for_contributors",
    "load_dataset",
    "make_mock",
    "mock_preview",
    "validate_dataset",
    "write_contributors",
]
