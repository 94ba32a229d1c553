"""Fixtures for the job store: a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


@contextmanager
def postgres_databases(prefix: str) -> Iterator[Callable[[], str]]:
    """make() -> the URL of a fresh, empty PostgreSQL database; all are dropped at the end.

    Skips the test when PostgreSQL on 127.0.0.1:5432 is not reachable.
    """
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    names: list[str] = []

    def make() -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    try:
        yield make
    finally:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with postgres_databases("fluxedit_test") as make:
        yield make()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty job database: a SQLite file, or the session's PostgreSQL database with fresh tables."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'fluxedit.db'}"
        return
    from fluxedit.jobs.db import metadata, open_database

    url = request.getfixturevalue("postgres_url")
    engine = open_database(url)
    metadata.drop_all(engine)
    engine.dispose()
    yield url


@pytest.fixture
def job_store(database_url: str):
    from fluxedit.jobs.store import JobStore

    store = JobStore(database_url)
    store.create_schema()
    yield store
    store.dispose()
