from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


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


@pytest.fixture(autouse=True, scope="session")
def no_defs_state_storage() -> Iterator[None]:
    """Tests build Definitions with no 'current' defs-state storage.

    Entering a DagsterInstance publishes its defs-state storage in a context variable (for
    state-backed components, which this project does not use), and building a repository
    reads it. Across a long test session that variable can end up holding the storage of an
    instance that is already gone, and the next Definitions built fails with "Attempted to
    resolve undefined DagsterInstance weakref" at a random test (CI saw it in two different
    tests). Reading it as absent is exactly the state this code location runs in.
    """
    from dagster._core.storage.defs_state.base import DefsStateStorage

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DefsStateStorage, "get", classmethod(lambda cls: None))
        yield
