"""The payload store (issue 18, item 2): a payload above ``CAIRN_STORE_PAYLOAD_BYTES`` is
stored once, content-addressed, and history holds a reference; every read resolves it;
retention's purge removes the payloads no remaining run refers to, and keeps shared ones."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from cairn import InputValidationError, activity, payloads, workflow
from cairn.store import payloads as stored
from cairn.store import retention
from cairn.store.retention import ALL_RUNS
from support import wait_for

BIG = "x" * (payloads.STORE_PAYLOAD_BYTES + 100)


@activity.defn
async def grow(text: str) -> str:
    return text + "!" * 20_000


@workflow.defn
async def big_flow(text: str) -> dict[str, str]:
    grown = await workflow.execute_activity(grow, text, start_to_close_timeout=timedelta(seconds=30))
    return {"grown": grown[:5] + str(len(grown)), "echo": text}


def _refs(data: object) -> set[str]:
    return payloads.find_refs(data)


async def test_large_payloads_are_stored_once_and_resolved_everywhere(client, start_worker, sql, monkeypatch):
    await start_worker(workflows=[big_flow], activities=[grow])
    handle = await client.start(big_flow, BIG, id="big-1")
    result = await handle.result(timeout=30)
    assert result == {"grown": "xxxxx" + str(len(BIG) + 20_000), "echo": BIG}
    # History holds references: the input, the activity's input and result, the run's result.
    rows = sql("SELECT h.type, h.data FROM cairn.history h ORDER BY seq")
    stored_in = {t for t, d in rows if _refs(d)}
    assert {"WorkflowStarted", "ActivityScheduled", "ActivityCompleted", "WorkflowCompleted"} <= stored_in
    assert max(len(json.dumps(d)) for _, d in rows) < 2_000, "no event holds a large payload inline"
    # Stored once: the input and the run's echo of it are the same content.
    (n, links), = sql("SELECT (SELECT count(*) FROM cairn.payloads), (SELECT count(*) FROM cairn.run_payloads)")
    assert n == 3
    assert links == 3
    # The client's history resolves them (cairn history --json reads the same), from the
    # database when this process does not hold them.
    monkeypatch.setattr(payloads, "_made", payloads._Made())
    events = await handle.history()
    started = next(e for e in events if e.type == "WorkflowStarted")
    assert started.data["input"] == [BIG]
    assert not any(_refs(e.data) for e in events)
    assert await handle.result() == result  # read from the row, resolved from the database
    described = await handle.describe()  # a stored result that is no LLM completion: no LLM call
    assert described.status == "completed"
    assert described.llm_calls == []


@activity.defn
async def small(n: int) -> int:
    return n + 1


@workflow.defn
async def small_flow(n: int) -> int:
    return await workflow.execute_activity(small, n, start_to_close_timeout=timedelta(seconds=30))


async def test_small_payloads_take_todays_path(client, start_worker, monkeypatch):
    """No statement, no walk: the store is not looked at for runs of small payloads."""
    monkeypatch.setattr(payloads, "_made", payloads._Made())
    touched: list[str] = []
    # The costs the store could add: a walk of the data (find_refs), a statement (values reads,
    # save_params builds a write's parameters). Each entry point returns before any of them.
    for module, name in ((payloads, "find_refs"), (stored, "values"), (stored, "save_params")):
        original = getattr(module, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            touched.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    before = stored.marked()
    await start_worker(workflows=[small_flow], activities=[small])
    for i in range(5):
        assert await (await client.start(small_flow, i, id=f"small-{i}")).result(timeout=30) == i + 1
    assert next(e.type for e in await client.get_handle("small-0").history()) == "WorkflowStarted"
    assert stored.marked() == before
    assert not payloads.made()
    assert touched == []


async def test_forged_reference_is_refused_writing_nothing(client, sql):
    victim = payloads.to_payload("y" * (payloads.STORE_PAYLOAD_BYTES + 1))
    forged = {payloads.REF_KEY: "A" * 43}
    for bad in (forged, {"nested": [forged]}, {payloads.REF_KEY: victim[payloads.REF_KEY], "x": 1}):
        with pytest.raises(InputValidationError, match="reserved"):
            await client.start(big_flow, bad, id="forged")
    assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.payloads") == [(0,)]


async def test_over_the_stored_limit_is_refused(client, sql, monkeypatch):
    monkeypatch.setattr(payloads, "MAX_STORED_PAYLOAD_BYTES", 50_000)
    with pytest.raises(InputValidationError, match="CAIRN_MAX_STORED_PAYLOAD_BYTES"):
        await client.start(big_flow, "z" * 60_000, id="too-big")
    assert sql("SELECT count(*) FROM cairn.runs") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.payloads") == [(0,)]


async def test_purge_removes_unreferenced_payloads_and_keeps_shared_ones(client, start_worker, sql, monkeypatch):
    await start_worker(workflows=[big_flow], activities=[grow])
    shared = "s" * (payloads.STORE_PAYLOAD_BYTES + 10)
    first = await client.start(big_flow, shared, id="shared-1")
    await first.result(timeout=30)
    second = await client.start(big_flow, shared, id="shared-2")
    await second.result(timeout=30)
    assert sql("SELECT count(*) FROM cairn.payloads") == [(3,)]  # both runs share all three
    await retention.purge_in(client.pool, client.namespace, flt=_only("shared-1"), cutoff=_future())
    assert sql("SELECT count(*) FROM cairn.runs") == [(1,)]
    assert sql("SELECT count(*) FROM cairn.payloads") == [(3,)], "shared payloads survive"
    monkeypatch.setattr(payloads, "_made", payloads._Made())  # read them from the database
    assert (await second.history())[0].data["input"] == [shared]
    await retention.purge_in(client.pool, client.namespace, flt=ALL_RUNS, cutoff=_future())
    assert sql("SELECT count(*) FROM cairn.payloads") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.run_payloads") == [(0,)]


def _only(workflow_id: str):
    from cairn.store.filters import parse_filter

    return parse_filter(f"WorkflowId = '{workflow_id}'")


def _future():
    from datetime import UTC, datetime

    return datetime.now(UTC) + timedelta(days=1)


@workflow.defn
async def child_flow(text: str, hops: int) -> str:
    if hops:
        workflow.continue_as_new(text + "+", hops - 1)  # a large input through continue-as-new
    return text + "!"  # a large result, through the parent's inbox into its history


@workflow.defn
async def parent_flow(text: str) -> dict[str, object]:
    state = {"last": ""}

    def remember(value: str) -> str:
        state["last"] = value
        return value.upper()  # a large update result

    workflow.set_update_handler("remember", remember)
    workflow.set_query_handler("last", lambda: state["last"] + "?")  # a large query answer
    signalled = await workflow.wait_signal("big")  # a large signal
    child = await workflow.execute_child_workflow(child_flow, text + signalled[:1], 2, id="child-of-parent")
    await workflow.wait_condition(lambda: bool(state["last"]))
    return {"child": child[-4:] + str(len(child)), "signal": len(signalled), "update": len(state["last"])}


async def test_signals_updates_queries_children_and_continue_as_new_carry_stored_payloads(
        client, start_worker, sql, monkeypatch):
    await start_worker(workflows=[parent_flow, child_flow])
    big = "p" * (payloads.STORE_PAYLOAD_BYTES + 50)
    handle = await client.start(parent_flow, big, id="parent")
    await handle.signal("big", "s" * (payloads.STORE_PAYLOAD_BYTES + 60))
    assert await handle.execute_update("remember", "u" * (payloads.STORE_PAYLOAD_BYTES + 70)) == \
        "U" * (payloads.STORE_PAYLOAD_BYTES + 70)
    assert await handle.query("last") == "u" * (payloads.STORE_PAYLOAD_BYTES + 70) + "?"
    result = await handle.result(timeout=30)
    assert result == {"child": "s++!" + str(len(big) + 4), "signal": payloads.STORE_PAYLOAD_BYTES + 60,
                      "update": payloads.STORE_PAYLOAD_BYTES + 70}
    # Every run links the payloads its own rows refer to (the child's chain included), so a
    # purge of one keeps what another still needs.
    linked = {(str(r), base64.urlsafe_b64encode(bytes(h)).rstrip(b"=").decode())
              for r, h in sql("SELECT run_id, hash FROM cairn.run_payloads")}
    referred = {(str(r), ref) for r, d in sql("SELECT run_id, data FROM cairn.history") for ref in _refs(d)}
    assert referred
    assert referred <= linked
    per_run = dict(sql("SELECT r.workflow_id || ':' || coalesce(r.continued_from::text, ''), count(l.hash) "
                       "FROM cairn.runs r LEFT JOIN cairn.run_payloads l USING (run_id) "
                       "GROUP BY 1"))
    assert len(per_run) == 4  # the parent, the child and its two continuations
    assert all(n > 0 for n in per_run.values()), per_run
    monkeypatch.setattr(payloads, "_made", payloads._Made())  # read back from the database
    events = await client.get_handle("child-of-parent").history()  # the chain's last run
    assert events[0].data["input"] == [big + "s++", 0]


async def test_a_schedule_keeps_its_arguments_inline(client, sql):
    """A schedule's row starts runs from any worker, long after: its arguments stay inline
    (no reference to a payload no run links)."""
    from cairn.client import Schedule, ScheduleActionStartWorkflow, ScheduleIntervalSpec, ScheduleSpec

    big = "k" * (payloads.STORE_PAYLOAD_BYTES + 5)
    await client.create_schedule("big-args", Schedule(action=ScheduleActionStartWorkflow(big_flow, big),
                                                      spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))])))
    [(args,)] = sql("SELECT action->'args' FROM cairn.schedules WHERE schedule_id = 'big-args'")
    assert args == [big]
    assert sql("SELECT count(*) FROM cairn.payloads") == [(0,)]


# ---------------------------------------------------------------- cairn verify, and the sweep


async def _cairn(db_url: str, *args: str):
    """``cairn ...`` (in a thread: the command runs its own event loop)."""
    import asyncio

    from click.testing import CliRunner

    from cairn.cli import main as cli

    return await asyncio.to_thread(CliRunner().invoke, cli, ["--database-url", db_url, *args])


async def test_verify_checks_every_reference(client, start_worker, sql, db_url):
    """A payload-store run verifies clean; a reference its run has no link to, one to a
    payload never stored, and a link of a run that does not exist are each reported."""
    from cairn.verify import verify

    await start_worker(workflows=[big_flow], activities=[grow])
    handle = await client.start(big_flow, BIG, id="verified")
    await handle.result(timeout=30)
    clean = await verify(db_url, workflows=[big_flow])
    assert clean.ok(), clean.to_json()
    assert clean.stats["payloads"] == {"stored": 3, "links": 3, "unlinked": 0}

    input_ref = payloads.to_payload(BIG)[payloads.REF_KEY]
    digest = stored.digests([input_ref])
    sql("DELETE FROM cairn.run_payloads WHERE run_id = %s AND hash = %s", (handle.run_id, digest[0]))
    never = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()
    sql("INSERT INTO cairn.inbox (run_id, type, data) VALUES (%s, 'SignalReceived', %s)",
        (handle.run_id, json.dumps({"name": "x", "payload": [{payloads.REF_KEY: never}]})))
    ghost = "00000000-0000-7000-8000-00000000abcd"
    sql("INSERT INTO cairn.run_payloads (run_id, hash) VALUES (%s, %s)", (ghost, digest[0]))

    ran = await _cairn(db_url, "verify", "--json")
    assert ran.exit_code == 1, ran.output
    report = json.loads(ran.output)
    found = {(v["invariant"], v["run_id"]): v["detail"] for v in report["violations"]
             if v["invariant"].startswith("payload.")}
    assert set(found) == {("payload.unlinked", handle.run_id), ("payload.missing", handle.run_id),
                          ("payload.orphan_link", ghost)}
    # the input is in WorkflowStarted (seq 1) and echoed in the result: one violation, its first place
    assert found["payload.unlinked", handle.run_id].startswith("history seq 1 (and 1 more row(s)) refers to "
                                                              f"stored payload {input_ref}")
    assert found["payload.missing", handle.run_id].startswith("inbox id ")
    assert never in found["payload.missing", handle.run_id]
    assert found["payload.orphan_link", ghost] == "1 payload link(s) of a run that does not exist"
    assert report["stats"]["payloads"] == {"stored": 3, "links": 3, "unlinked": 0}


def _orphan(sql, n: int, *, age: timedelta) -> bytes:
    """A payload no run links, stored ``age`` ago (as a purge that passed over a payload
    being linked, then the linker's rollback, leaves one)."""
    digest = bytes([n]) * 32
    sql("INSERT INTO cairn.payloads (hash, compressed, size, created_at) VALUES (%s, 'x', 1, now() - %s)",
        (digest, age))
    return digest


async def test_sweep_removes_old_unlinked_payloads_only(client, start_worker, sql, db_url):
    import psycopg

    await start_worker(workflows=[big_flow], activities=[grow])
    await (await client.start(big_flow, BIG, id="kept")).result(timeout=30)
    sql("UPDATE cairn.payloads SET created_at = now() - interval '1 day'")  # linked, and old
    old = _orphan(sql, 1, age=timedelta(days=1))
    young = _orphan(sql, 2, age=timedelta(minutes=5))  # within the grace period
    linking = _orphan(sql, 3, age=timedelta(days=1))
    run_id = sql("SELECT run_id FROM cairn.runs")[0][0]
    # A writer linking a payload right now (uncommitted): its foreign key check holds the
    # payload's KEY SHARE lock, which the sweep passes over.
    async with await psycopg.AsyncConnection.connect(db_url) as writer:
        await writer.execute("INSERT INTO cairn.run_payloads (run_id, hash) VALUES (%s, %s)", (run_id, linking))
        dry = await _cairn(db_url, "db", "payloads", "--sweep", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        assert json.loads(dry.output)["payloads"] == 2  # a dry run counts; it does not lock
        assert sql("SELECT count(*) FROM cairn.payloads") == [(6,)]
        swept = await client.sweep_payloads()
        assert swept.payloads == 1
        left = {bytes(h) for (h,) in sql("SELECT hash FROM cairn.payloads")}
        assert old not in left
        assert {young, linking} <= left
        assert len(left) == 5  # the run's three, the young one, the one being linked
        await writer.rollback()  # the writer fails: now that one has no link either
    ran = await _cairn(db_url, "db", "payloads", "--sweep", "--json")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["payloads"] == 1
    assert {bytes(h) for (h,) in sql("SELECT hash FROM cairn.payloads")} >= {young}
    assert sql("SELECT count(*) FROM cairn.payloads") == [(4,)]
    human = await _cairn(db_url, "db", "payloads", "--sweep")
    assert human.exit_code == 0
    assert human.output.startswith("removed 0 stored payloads no run links")
    assert (await _cairn(db_url, "db", "payloads", "--dry-run")).exit_code == 2
    from cairn.verify import verify

    report = await verify(db_url)
    assert report.ok(), report.to_json()
    assert report.stats["payloads"]["unlinked"] == 1  # the young one, kept


async def test_the_retention_pass_sweeps_in_slices(client, sql, monkeypatch):
    """The workers' pass sweeps a few slices each time, going on where the last one stopped."""
    from cairn.worker import retention as worker_retention

    for n in range(1, 8):
        _orphan(sql, n * 30, age=timedelta(days=2))
    monkeypatch.setattr(stored, "SWEEP_SCAN", 2)
    monkeypatch.setattr(worker_retention, "SWEEP_SLICES", 2)
    purger = worker_retention.Purger()
    purger._swept_to = b""
    await purger._pass(client.pool)  # two slices of two: the four lowest hashes
    assert sql("SELECT count(*) FROM cairn.payloads") == [(3,)]
    assert purger._swept_to == bytes([120]) * 32
    await purger._pass(client.pool)  # the last three
    assert sql("SELECT count(*) FROM cairn.payloads") == [(0,)]
    assert purger._swept_to == bytes([210]) * 32
    await purger._pass(client.pool)  # the end of the table: the next pass starts over
    assert purger._swept_to == b""


def test_a_link_committed_during_the_purges_look_does_not_fail_its_chunk(db_url, sql):
    """The purge's payload removal, held (by a test-only row-security gate on cairn.payloads)
    after its statement's snapshot and before it locks a payload: a writer links that payload
    and commits meanwhile. Deleting in the statement that looked (0022) failed the chunk on
    the foreign key; locking, then deleting what a new snapshot still sees unlinked (0027),
    keeps the payload and purges the run."""
    import threading
    import uuid

    import psycopg

    closed, other = uuid.uuid4(), uuid.uuid4()
    sql("""INSERT INTO cairn.runs (run_id, workflow_id, workflow_type, queue, status, closed_at)
           VALUES (%s, 'old', 't', 'default', 'completed', now()), (%s, 'new', 't', 'default', 'running', NULL)""",
        (closed, other))
    alone, linked = _orphan(sql, 1, age=timedelta(0)), _orphan(sql, 2, age=timedelta(0))
    sql("INSERT INTO cairn.run_payloads (run_id, hash) VALUES (%s, %s), (%s, %s)", (closed, alone, closed, linked))
    # Row security applies to the purge (SECURITY DEFINER) only under an owner that is not a
    # superuser: such a role, with the rights the purge uses, owns it for this test; the
    # gate waits on an advisory lock the test holds, for the payload `linked` only.
    role = f"cairn_gated_{uuid.uuid4().hex[:10]}"
    gate = 727_027
    setup = [f'CREATE ROLE "{role}"', f'GRANT USAGE, CREATE ON SCHEMA cairn TO "{role}"',
             f'GRANT ALL ON ALL TABLES IN SCHEMA cairn TO "{role}"',
             f"""CREATE FUNCTION public.purge_gate(h bytea) RETURNS boolean LANGUAGE plpgsql AS $$
                 BEGIN
                     IF h = '\\x{linked.hex()}'::bytea THEN PERFORM pg_advisory_xact_lock_shared({gate}); END IF;
                     RETURN true;
                 END $$""",
             f'ALTER FUNCTION cairn.purge_closed_runs(uuid[]) OWNER TO "{role}"',
             "ALTER TABLE cairn.payloads ENABLE ROW LEVEL SECURITY",
             f'CREATE POLICY purge_gate ON cairn.payloads TO "{role}" USING (public.purge_gate(hash))'
             " WITH CHECK (true)"]
    teardown = ["ALTER FUNCTION cairn.purge_closed_runs(uuid[]) OWNER TO CURRENT_USER",
                "DROP POLICY IF EXISTS purge_gate ON cairn.payloads",
                "ALTER TABLE cairn.payloads DISABLE ROW LEVEL SECURITY",
                "DROP FUNCTION IF EXISTS public.purge_gate(bytea)", f'DROP OWNED BY "{role}"', f'DROP ROLE "{role}"']
    with psycopg.connect(db_url, autocommit=True) as admin:
        try:
            for statement in setup:
                admin.execute(statement)
            admin.execute("SELECT pg_advisory_lock(%s)", (gate,))
            outcome: dict[str, object] = {}
            with psycopg.connect(db_url, autocommit=True) as purger:

                def purge() -> None:
                    try:
                        outcome["rows"] = purger.execute("SELECT * FROM cairn.purge_closed_runs(%s)",
                                                         ([closed],)).fetchall()
                    except psycopg.Error as exc:
                        outcome["error"] = exc

                thread = threading.Thread(target=purge)
                thread.start()
                try:
                    # The purge waits at the gate, inside its payload statement (its session says so).
                    wait_for("the purge to wait at the gate", lambda: sql(
                        "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                        (purger.info.backend_pid,)) == [("Lock", "advisory")])
                    # The writer's link commits at once: the purge has not locked the payload yet.
                    sql("INSERT INTO cairn.run_payloads (run_id, hash) VALUES (%s, %s)", (other, linked))
                finally:
                    admin.execute("SELECT pg_advisory_unlock(%s)", (gate,))
                    thread.join(timeout=60)
            assert "error" not in outcome, outcome
            assert outcome["rows"] == [(1, 0)]
            left = {bytes(h) for (h,) in sql("SELECT hash FROM cairn.payloads")}
            assert left == {linked}
            assert sql("SELECT run_id FROM cairn.run_payloads") == [(other,)]
            assert sql("SELECT count(*) FROM cairn.runs WHERE run_id = %s", (closed,)) == [(0,)]
        finally:
            admin.execute("SELECT pg_advisory_unlock_all()")
            for statement in teardown:
                admin.execute(statement)
