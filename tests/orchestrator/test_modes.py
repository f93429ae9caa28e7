"""The round-mode registry: every aggregation a plan may name has exactly one mode."""

import pytest

from common.errors import ServiceError
from common.protocol import Plan
from orchestrator import modes


@pytest.mark.parametrize("name", ["plain", "secagg", "he"])
def test_every_plan_aggregation_has_its_mode(name):
    mode = modes.get(Plan(rounds=1, aggregation=name).aggregation)
    assert mode.name == name and mode.secure == (name != "plain")


def test_an_unknown_mode_is_refused():
    with pytest.raises(ServiceError, match="unknown aggregation mode 'thresh'"):
        modes.get("thresh")


def test_a_plan_may_name_a_mode_that_only_the_registries_judge():
    """A new mode needs no protocol change: the plan accepts any mode-shaped name, the
    registries refuse what they do not know, and a malformed name never validates."""
    assert Plan(rounds=1, aggregation="he-threshold").aggregation == "he-threshold"
    with pytest.raises(ServiceError, match="unknown aggregation mode 'he-threshold'"):
        modes.get("he-threshold")
    with pytest.raises(ValueError, match="aggregation"):
        Plan(rounds=1, aggregation="He Threshold")

