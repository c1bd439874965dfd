"""Shared fixtures: a real Postgres (CAIRN_TEST_DATABASE_URL, else the embedded server),
a template database migrated once per session, and a fresh database cloned per test
(cloned ahead of the test, on a thread, and dropped after it there too)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
import uuid
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from cairn import Client, testing
from cairn.llm.testing import fake_llm  # noqa: F401  (the fake LLM provider fixture)
from cairn.store import db
from support import query
from support.postgres import private_pg  # noqa: F401  (a Postgres the test owns: the fixture)

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


def _create_db(admin_url: str, prefix: str, template: str | None = None) -> str:
    """Creates a database (optionally from a template) and returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    return name


def _drop_db(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _scratch_db(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """Creates a database (optionally from a template), yields its URL, drops it."""
    name = _create_db(admin_url, prefix, template)
    try:
        yield _with_db(admin_url, name)
    finally:
        _drop_db(admin_url, name)


class _Clones:
    """Clones of the template made ahead of the tests that take them, on two threads that
    also drop the used ones. Each CREATE DATABASE writes the template's 7 MB to the WAL and
    each DROP DATABASE waits for a checkpoint (PostgreSQL 15): 0.02 to 0.4 s each, most
    while other suites share the server, and ~1,000 tests take a clone. Made ahead, two at
    a time, they cost the 85 tests of test_visibility.py 11 to 15 s instead of 24 to 38 s
    (measured under a neighbour's load). A clone is handed out complete, and the error of
    one that failed reaches the test that takes it."""

    THREADS = 2  # concurrent creates and drops share their WAL flushes and checkpoints
    AHEAD = 6  # enough for a run of the shortest tests; each clone is ~7 MB

    def __init__(self, admin_url: str, template: str) -> None:
        self._admin_url, self._template = admin_url, template
        self._threads = ThreadPoolExecutor(max_workers=self.THREADS, thread_name_prefix="cairn-test-clones")
        self._ahead: deque[Future[str]] = deque(self._clone() for _ in range(self.AHEAD))
        self._drops: list[Future[None]] = []

    def _clone(self) -> Future[str]:
        return self._threads.submit(_create_db, self._admin_url, "cairn_t", self._template)

    def take(self) -> str:
        """The name of a fresh clone, for one test."""
        self._ahead.append(self._clone())
        return self._ahead.popleft().result()

    def give_back(self, name: str) -> None:
        self._drops.append(self._threads.submit(_drop_db, self._admin_url, name))

    def close(self) -> None:
        """Drops the clones nobody took; raises the first error of a drop."""
        for made in self._ahead:
            with contextlib.suppress(Exception):  # a failed clone left nothing to drop
                self.give_back(made.result())
        self._threads.shutdown(wait=True)
        for dropped in self._drops:
            dropped.result()


@pytest.fixture(scope="session")
def _clones(pg_admin_url: str, template_db: str) -> Iterator[_Clones]:
    clones = _Clones(pg_admin_url, template_db)
    try:
        yield clones
    finally:
        clones.close()


@pytest.fixture
def db_url(pg_admin_url: str, _clones: _Clones) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = _clones.take()
    try:
        yield _with_db(pg_admin_url, name)
    finally:
        _clones.give_back(name)


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
    Defaults suit tests (``cairn.testing.TEST_WORKER_OPTIONS``): a short poll interval and lease.
    """
    workers = testing.Workers(db_url)
    yield workers.start
    await workers.stop(raise_errors=False)  # a test may break its workers on purpose


@pytest.fixture
def sql(db_url: str) -> Callable[..., list[tuple[Any, ...]]]:
    """``sql("SELECT ...", params)`` on the test database."""
    return lambda statement, params=None: query(db_url, statement, params)


# ---------------------------------------------------------------- two xdist workers (`make test`)

# Fleets of worker processes whose 2 s leases, kills and rate windows need the machine. Two
# at once on 2 cores missed lease renewals and kill timings (3 failed in one run of the suite
# on plain `-n 2`: a takeover before the zombie's lease was out, a saga run no kill reached,
# calls paid twice), so they run one at a time, on one xdist worker, while the other runs
# the rest: they are ~45 % of the suite's time, the rest as much again.
FLEET = frozenset({
    "tests/acceptance/test_crash.py", "tests/acceptance/test_saga_crash.py",
    "tests/acceptance/test_async_completion_processes.py",
    "tests/acceptance/test_llm_processes.py", "tests/acceptance/test_llm_storm.py",
    "tests/acceptance/test_llm_storm_faults.py", "tests/acceptance/test_llm_third_party.py",
    "tests/acceptance/test_llm_third_party_agent.py",
    "tests/acceptance/test_resilience_processes.py", "tests/chaos/test_chaos.py",
    "tests/chaos/test_database_faults.py", "tests/examples/test_example_document_pipeline.py",
})


if importlib.util.find_spec("xdist") is not None:  # a hook pytest refuses to load without xdist

    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
        """``-n N`` (``--dist load``): every test its own unit of work, but the fleet one
        unit, sent first (the biggest unit is). xdist's own ``loadgroup`` would do it from
        ``xdist_group`` marks, but it stopped grouping on pytest 9.2 (pytest-xdist#1386)."""
        if config.getvalue("dist") != "load":
            return None
        if missing := sorted(path for path in FLEET if not (config.rootpath / path).is_file()):
            raise pytest.UsageError(f"tests/conftest.py: FLEET names missing files: {missing}")
        from xdist.scheduler import LoadScopeScheduling

        class FleetScheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return "fleet" if nodeid.split("::", 1)[0] in FLEET else nodeid

        return FleetScheduling(config, log)
