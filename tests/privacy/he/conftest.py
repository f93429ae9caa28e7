"""The `fed` fixture: one three-site federation shared by the `he` tests."""

import pytest

from tests.privacy.he.federation import Federation, make_federation


@pytest.fixture(scope="package")
def fed() -> Federation:
    return make_federation()
