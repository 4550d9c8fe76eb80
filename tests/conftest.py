from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# The tests use fixed nights (2026-11-20, ...), so the calendar must start before them whatever
# today is; unset, it would start on the first of the current month. Set before any test module
# imports hydra_assets (the partitions are built from the settings at import).
TEST_NIGHTS_START = "2026-01-01"
os.environ["HYDRA_NIGHTS_START"] = TEST_NIGHTS_START


def _admin_url() -> str:
    return os.environ.get("HYDRA_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """URL of a reachable PostgreSQL server; CI must have one, a laptop may not."""
    url = _admin_url()
    try:
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text("select 1"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but {url} is not reachable: {exc}")
        pytest.skip(f"no PostgreSQL at {url} (set HYDRA_TEST_POSTGRES_URL): {exc}")
    return url


@pytest.fixture
def postgres_database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"hydra_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'create database "{name}"'))
    url = sa.engine.make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
