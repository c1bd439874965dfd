"""`cairn breakers` (list, open, close, disable, enable, reset) through click, in process."""

from __future__ import annotations

import asyncio
import json

import psycopg

from cairn import breakers
from cairn.breakers import BreakerConfig
from support import bad_input, cairn, ok


def make_breaker(db_url: str, name: str, failures: int) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            cfg = BreakerConfig(minimum_calls=4, window_size=10)
            for i in range(4):
                a = await breakers.admit(conn, name, cfg)
                await breakers.record(conn, name, a, success=i >= failures)

    asyncio.run(go())


def test_list_shows_state_rates_and_transitions(db_url):
    assert "no breakers yet" in ok(cairn(db_url, "breakers"))
    make_breaker(db_url, "openai:gpt-4o-mini:chat", failures=1)
    make_breaker(db_url, "payments", failures=3)
    listed = json.loads(ok(cairn(db_url, "breakers", "--json")))
    by_name = {b["name"]: b for b in listed}
    assert by_name["openai:gpt-4o-mini:chat"]["state"] == "closed"
    assert by_name["openai:gpt-4o-mini:chat"]["failure_rate"] == 25.0
    assert by_name["openai:gpt-4o-mini:chat"]["calls_in_window"] == 4
    assert by_name["payments"]["state"] == "open"
    assert by_name["payments"]["generation"] == 2
    assert by_name["payments"]["open_until"] is not None
    assert by_name["payments"]["consecutive_opens"] == 1
    assert by_name["payments"]["counters"] == {"successful": 1, "failed": 3, "slow": 0, "not_permitted": 0}
    assert by_name["payments"]["transitions"][0]["to_state"] == "open"
    text = ok(cairn(db_url, "breakers"))
    assert "payments" in text
    assert "open" in text
    assert "25%" in text
    assert "closed -> open (gen 2): failure rate 75.0%" in text


def test_open_close_disable_enable(db_url, sql):
    make_breaker(db_url, "payments", failures=0)
    assert "forced_open" in ok(cairn(db_url, "breakers", "open", "payments"))
    assert sql("SELECT state, open_until FROM cairn.breakers") == [("forced_open", None)]
    ok(cairn(db_url, "breakers", "close", "payments"))
    assert sql("SELECT state FROM cairn.breakers") == [("closed",)]
    out = json.loads(ok(cairn(db_url, "breakers", "open", "payments", "--for", "90", "--json")))
    assert out["state"] == "open"
    assert out["open_until"]
    (left,), = sql("SELECT extract(epoch FROM open_until - now()) FROM cairn.breakers")
    assert 80 < left <= 91
    ok(cairn(db_url, "breakers", "open", "payments", "--until", "2999-01-01T00:00:00Z"))
    assert sql("SELECT state, extract(year FROM open_until AT TIME ZONE 'UTC') FROM cairn.breakers") \
        == [("open", 2999)]
    ok(cairn(db_url, "breakers", "disable", "payments"))
    assert sql("SELECT state FROM cairn.breakers") == [("disabled",)]
    ok(cairn(db_url, "breakers", "enable", "payments"))
    assert sql("SELECT state FROM cairn.breakers") == [("closed",)]
    assert [t for t, in sql("SELECT to_state FROM cairn.breaker_events ORDER BY id")] == [
        "forced_open", "closed", "open", "open", "disabled", "closed"]
    ok(cairn(db_url, "breakers", "reset", "payments"))
    assert sql("SELECT count(*) FROM cairn.breakers") == [(0,)]


def test_bad_input_exits_2(db_url, sql):
    bad_input(cairn(db_url, "breakers", "close", "nope"), "no breaker named 'nope'")
    bad_input(cairn(db_url, "breakers", "open", "nope"), "no breaker named 'nope'")
    bad_input(cairn(db_url, "breakers", "disable", "nope"), "no breaker named")
    bad_input(cairn(db_url, "breakers", "enable", "nope"), "no breaker named")
    make_breaker(db_url, "payments", failures=0)
    bad_input(cairn(db_url, "breakers", "open", "payments", "--for", "-5"), "--for must be a positive")
    bad_input(cairn(db_url, "breakers", "open", "payments", "--for", "soon"))
    bad_input(cairn(db_url, "breakers", "open", "payments", "--until", "tomorrow"), "not an ISO 8601 time")
    bad_input(cairn(db_url, "breakers", "open", "payments", "--until", "2001-01-01T00:00:00Z"), "in the past")
    bad_input(cairn(db_url, "breakers", "open", "payments", "--until", "2999-01-01", "--for", "5"), "at most one")
    assert sql("SELECT state FROM cairn.breakers") == [("closed",)], "bad input writes nothing"
