"""Migrations: concurrent migrates of an empty database both succeed and produce exactly the
schema of a fresh install (the session's template database, which each test db clones)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from cairn.errors import SchemaNotReadyError
from cairn.store import db

# One query per kind of schema object in schema `cairn`, each giving sorted, name-keyed
# rows that do not depend on OIDs or on the database's name.
SCHEMA_QUERIES: dict[str, str] = {
    "tables": """
        SELECT c.relname, c.relkind, c.relpersistence
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'cairn' ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attgenerated, a.attidentity, a.attcollation
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'cairn' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
        ORDER BY 1, 2""",
    "constraints": """
        SELECT cl.relname, co.conname, co.contype, pg_get_constraintdef(co.oid)
        FROM pg_constraint co
        JOIN pg_class cl ON cl.oid = co.conrelid
        JOIN pg_namespace n ON n.oid = cl.relnamespace
        WHERE n.nspname = 'cairn' ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'cairn' ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'cairn' AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'cairn' ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by
        FROM pg_sequences WHERE schemaname = 'cairn' ORDER BY 1""",
}


def schema_dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {kind: conn.execute(query).fetchall() for kind, query in SCHEMA_QUERIES.items()}


def versions(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT version, name, checksum FROM cairn.schema_versions ORDER BY version").fetchall()


def test_concurrent_migrations_equal_a_fresh_install(empty_db_url, db_url):
    assert schema_dump(empty_db_url)["tables"] == []
    with psycopg.connect(empty_db_url, autocommit=True) as conn, pytest.raises(SchemaNotReadyError):
        db.check_schema(conn)

    barrier = threading.Barrier(2)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(db.migrate(empty_db_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    every = [m.version for m in db.migrations()]
    # One migrate applied everything, the other found nothing left to do.
    assert sorted(results, key=len) == [[], every]
    assert versions(empty_db_url) == [(m.version, m.name, m.checksum) for m in db.migrations()]

    fresh, migrated = schema_dump(db_url), schema_dump(empty_db_url)
    assert fresh["tables"], "the fresh install has no tables?"
    for kind in SCHEMA_QUERIES:
        assert migrated[kind] == fresh[kind], kind

    # And it is up to date: a third migrate is a no-op and the check passes.
    assert db.migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        db.check_schema(conn)
        status = db.schema_status(conn)
    assert status.up_to_date
    assert status.applied == every
    assert status.mismatched == []
    assert versions(empty_db_url) == versions(db_url)
