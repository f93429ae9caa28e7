"""Shared pytest configuration: the PostgreSQL pass and test-output folder."""

import os
from pathlib import Path

import pytest

from tests.availability import UNDER_CI

REPO = Path(__file__).resolve().parent.parent
TEST_OUTPUT = REPO / "test-output"


def _postgres_unreachable() -> str | None:
    """Why the DATABASE_URL PostgreSQL server cannot be used, or None when it answers."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    try:
        psycopg.connect(
            dbname=cfg["NAME"],
            user=cfg["USER"] or None,
            host=cfg["HOST"] or None,
            port=cfg["PORT"] or None,
            password=cfg["PASSWORD"] or None,
            connect_timeout=3,
        ).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL server answers at {cfg['HOST']}:{cfg['PORT']}: {exc}"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _postgres_unreachable()
    if reason:
        if UNDER_CI:  # a PostgreSQL pass where every test skipped must not count as green
            raise pytest.UsageError(f"{reason} (CI must provide it: see .ci/run)")
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def test_output() -> Path:
    TEST_OUTPUT.mkdir(exist_ok=True)
    return TEST_OUTPUT
