"""What a test does when something it needs is missing: skip locally, fail under CI.

CI (``CI=true``, as ``.ci/run`` runs) installs and starts everything the suite uses, so a
missing service or tool there is a broken run, never a green one with the tests skipped.
"""

import os

import pytest

UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip the calling test because ``reason``; under CI, fail it instead."""
    if UNDER_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/run)", pytrace=False)
    pytest.skip(reason)
