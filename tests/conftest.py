"""Shared fixtures: a real Postgres (CAIRN_TEST_DATABASE_URL, else the embedded server),
a template database migrated once per session, and a fresh database cloned per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from cairn import Client, Worker, db
from cairn.llm.testing import fake_llm  # noqa: F401  (the fake LLM provider fixture)

ROOT = Path(__file__).resolve().parent.parent


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A superuser URL on a server where tests may create databases."""
    url = os.environ.get("CAIRN_TEST_DATABASE_URL")
    if url and _reachable(url):
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        tmp = tempfile.mkdtemp(prefix="cairn-test-pg-")
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def _with_db(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def template_db(pg_admin_url: str) -> Iterator[str]:
    """A database with the schema migrated, cloned by each test."""
    name = f"cairn_tmpl_{os.getpid()}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    db.migrate(_with_db(pg_admin_url, name))
    yield name
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _scratch_db(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """Creates a database (optionally from a template), yields its URL, drops it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield _with_db(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(pg_admin_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with _scratch_db(pg_admin_url, "cairn_t", template_db) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    with _scratch_db(pg_admin_url, "cairn_e") as url:
        yield url


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    c = await Client.connect(db_url)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def start_worker(db_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Starts in-process workers on the test database; all are stopped at teardown.

    ``await start_worker(workflows=[...], activities=[...], **options)`` returns the worker.
    Defaults suit tests: a short poll interval and lease.
    """
    runners: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(**kwargs: Any) -> Worker:
        kwargs.setdefault("poll_interval", 0.2)
        kwargs.setdefault("lease_seconds", 5.0)
        worker = Worker(db_url, **kwargs)
        task = asyncio.create_task(worker.run())
        started = asyncio.create_task(worker.started())
        done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            started.cancel()
            task.result()
        runners.append((worker, task))
        return worker

    yield start
    for worker, _ in runners:
        worker.stop()
    for _, task in runners:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 40)


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Runs one query on a test database and returns its rows (for asserting from the DB)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def sql(db_url: str) -> Callable[..., list[tuple[Any, ...]]]:
    """``sql("SELECT ...", params)`` on the test database."""
    return lambda statement, params=None: query(db_url, statement, params)
