"""The worker's psycopg errors, translated by the store (cairn.store.transactions.translate):
the worker acts on the kind, never on psycopg's classes."""

from __future__ import annotations

import psycopg
from psycopg import errors as pgerr

from cairn.errors import DatabaseError, DatabaseUnavailable, Deadlock, Refused, SpeculationMissed, Transient
from cairn.store.transactions import SPECULATION_MISSED, translate


class _Missed(psycopg.DatabaseError):
    """What ``complete_activities_speculated`` raises (a SQLSTATE psycopg has no class for)."""

    sqlstate = SPECULATION_MISSED


def test_refusals_say_whether_a_race_or_a_constraint():
    unique = translate(pgerr.UniqueViolation("duplicate key"))
    assert isinstance(unique, Refused)
    assert unique.race
    assert unique.integrity
    value = translate(pgerr.UntranslatableCharacter("\\u0000 cannot be converted to text"))
    assert isinstance(value, Refused)
    assert not value.race
    assert not value.integrity
    assert isinstance(translate(pgerr.UndefinedParameter("no such parameter")), Refused)


def test_a_lost_deadlock_and_a_lost_connection_are_transient():
    deadlock = translate(pgerr.DeadlockDetected("deadlock detected"))
    assert isinstance(deadlock, Deadlock)
    assert isinstance(deadlock, DatabaseUnavailable)
    lost = translate(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert isinstance(lost, Transient)
    assert not isinstance(lost, Deadlock)
    assert isinstance(translate(pgerr.AdminShutdown("terminating connection")), Transient)


def test_a_missed_speculation_is_its_own_kind():
    missed = translate(_Missed("run not as cached"))
    assert isinstance(missed, SpeculationMissed)
    assert isinstance(missed, DatabaseError)


def test_the_text_is_psycopgs_with_passwords_masked():
    exc = translate(psycopg.OperationalError("cannot connect to postgresql://u:s3cret-pw@db/x"))
    assert "s3cret-pw" not in str(exc)
    assert "cannot connect" in str(exc)
