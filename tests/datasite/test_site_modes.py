"""The datasite's round-mode registry mirrors the orchestrator's."""

import pytest

from common.errors import ServiceError
from common.protocol import Plan
from datasite import modes as site_modes
from orchestrator import modes as orchestrator_modes


def test_both_roles_register_the_same_modes():
    assert set(site_modes.MODES) == set(orchestrator_modes.MODES)


def test_a_datasite_refuses_a_mode_it_does_not_register():
    with pytest.raises(ServiceError, match="this site cannot aggregate with 'he-threshold'"):
        site_modes.of(Plan(rounds=1, aggregation="he-threshold"))
