"""Schedules against a real database and in-process workers: firing once per slot, the
overlap policies, pause/unpause, trigger, backfill, update, delete, the catch-up window;
and the delayed start (start_delay)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cairn import InputValidationError, workflow
from cairn.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
)
from cairn.errors import ScheduleAlreadyRunning, ScheduleNotFound
from cairn.sync import SyncClient
from support import bad_input, cairn_in_thread, ok, wait_until


@workflow.defn
async def tick(label: str) -> str:
    return f"tick {label}"


@workflow.defn
async def slow_tick(label: str) -> str:
    await workflow.sleep(30)
    return label


@workflow.defn
async def waits_for_go() -> list[str]:
    got: list[str] = []
    workflow.set_signal_handler("go", got.append)
    await workflow.wait_condition(lambda: bool(got))
    return got


def every(seconds: float, overlap: ScheduleOverlapPolicy = ScheduleOverlapPolicy.SKIP, *,
          fn=tick, paused: bool = False) -> Schedule:
    return Schedule(action=ScheduleActionStartWorkflow(fn, "x", queue="default"),
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=seconds))]),
                    policy=SchedulePolicy(overlap=overlap), state=ScheduleState(note="n", paused=paused))


def actions(sql, schedule_id: str) -> list[tuple]:
    return sql("SELECT slot, kind, status, workflow_id FROM cairn.schedule_actions WHERE schedule_id = %s "
               "ORDER BY slot", (schedule_id,))


async def test_fires_once_per_slot_with_two_workers(client, start_worker, sql):
    await start_worker(workflows=[tick])
    await start_worker(workflows=[tick])
    await client.create_schedule("s1", every(1))
    await wait_until(lambda: len(actions(sql, "s1")) >= 4, timeout=20)
    rows = actions(sql, "s1")
    slots = [r[0] for r in rows]
    assert len(slots) == len(set(slots))
    assert all(r[2] == "started" and r[1] == "scheduled" for r in rows)
    assert all(r[0].microsecond == 0 for r in rows)  # slots are the spec's whole seconds
    assert rows[0][3] == "s1-" + rows[0][0].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # One run per slot, with the slot's workflow id.
    runs = sql("SELECT workflow_id FROM cairn.runs WHERE workflow_id LIKE 's1-%%'")
    assert len(runs) >= 4
    assert len(runs) == len({r[0] for r in runs})
    desc = await client.get_schedule_handle("s1").describe()
    assert desc.schedule.state.note == "n"
    assert desc.info.num_actions >= 4
    assert desc.info.recent_actions[0].status == "started"
    assert len(desc.info.next_action_times) == 5
    assert desc.to_json()["action"]["workflow"] == "tick"


async def test_skip_and_buffer_one(client, start_worker, sql):
    await start_worker(workflows=[slow_tick])
    await client.create_schedule("skip", every(1, ScheduleOverlapPolicy.SKIP, fn=slow_tick))
    await client.create_schedule("buf1", every(1, ScheduleOverlapPolicy.BUFFER_ONE, fn=slow_tick))
    await wait_until(lambda: len(actions(sql, "skip")) >= 3 and len(actions(sql, "buf1")) >= 4, timeout=20)
    skip = [r[2] for r in actions(sql, "skip")]
    assert skip[0] == "started"
    assert set(skip[1:]) == {"skipped"}
    buf = [r[2] for r in actions(sql, "buf1")]
    assert buf[0] == "started"
    assert buf[1] == "buffered"
    assert set(buf[2:]) == {"skipped"}


async def test_allow_all_and_terminate_other(client, start_worker, sql):
    await start_worker(workflows=[slow_tick])
    await client.create_schedule("all", every(1, ScheduleOverlapPolicy.ALLOW_ALL, fn=slow_tick))
    await client.create_schedule("term", every(1, ScheduleOverlapPolicy.TERMINATE_OTHER, fn=slow_tick))
    await wait_until(lambda: len(actions(sql, "all")) >= 3 and len(actions(sql, "term")) >= 3, timeout=20)
    assert {r[2] for r in actions(sql, "all")} == {"started"}
    assert {r[2] for r in actions(sql, "term")} == {"started"}
    first = actions(sql, "term")[0][3]
    await wait_until(lambda: sql("SELECT status FROM cairn.runs WHERE workflow_id = %s", (first,))
                     == [("terminated",)], timeout=20)


async def test_cancel_other_starts_after_the_cancel(client, start_worker, sql):
    await start_worker(workflows=[slow_tick])
    await client.create_schedule("cancel", every(2, ScheduleOverlapPolicy.CANCEL_OTHER, fn=slow_tick))
    await wait_until(lambda: len([r for r in actions(sql, "cancel") if r[2] == "started"]) >= 2, timeout=20)
    first = actions(sql, "cancel")[0][3]
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = %s", (first,)) == [("cancelled",)]


async def test_buffer_all_runs_each_in_turn(client, start_worker, sql):
    await start_worker(workflows=[tick])
    handle = await client.create_schedule("ball", every(3600, ScheduleOverlapPolicy.BUFFER_ALL))
    now = datetime.now(UTC)
    # A backfill of three hourly slots, one after another.
    await handle.backfill(ScheduleBackfill(start_at=now - timedelta(hours=3), end_at=now - timedelta(seconds=1)))
    await wait_until(lambda: [r[2] for r in actions(sql, "ball")] == ["started"] * 3, timeout=20)
    assert [r[1] for r in actions(sql, "ball")] == ["backfill"] * 3
    # Backfilling the same range again acts on no slot twice.
    await handle.backfill(ScheduleBackfill(start_at=now - timedelta(hours=3), end_at=now - timedelta(seconds=1),
                                           overlap=ScheduleOverlapPolicy.ALLOW_ALL))
    assert len(actions(sql, "ball")) == 3


async def test_pause_unpause_trigger_update_delete(client, start_worker, sql):
    await start_worker(workflows=[tick])
    handle = await client.create_schedule("ops", every(3600))
    await handle.pause(note="Pausing the schedule for now")
    desc = await handle.describe()
    assert desc.schedule.state.paused
    assert desc.schedule.state.note == "Pausing the schedule for now"
    assert desc.info.next_action_times == []
    await handle.trigger()  # a trigger acts even while paused (as Temporal's)
    await wait_until(lambda: [r[1:3] for r in actions(sql, "ops")] == [("trigger", "started")], timeout=10)
    await handle.unpause(note="back")
    assert not (await handle.describe()).schedule.state.paused

    async def change(given):
        given.description.schedule.action.args = ["my new schedule arg"]
        return ScheduleUpdate(schedule=given.description.schedule)

    await handle.update(change)
    assert (await handle.describe()).schedule.action.args == ["my new schedule arg"]
    [listed] = await client.list_schedules()
    assert [s.id async for s in await client.list_schedules()] == ["ops"]
    assert listed.id == "ops"
    assert listed.workflow_type == "tick"
    await handle.delete()
    with pytest.raises(ScheduleNotFound):
        await handle.describe()
    assert sql("SELECT count(*) FROM cairn.schedule_actions") == [(0,)]


async def test_bad_input_writes_nothing(client, sql):
    bad = [
        Schedule(action=ScheduleActionStartWorkflow(tick, "x"), spec=ScheduleSpec()),
        Schedule(action=ScheduleActionStartWorkflow(tick, "x"), spec=ScheduleSpec(cron_expressions=["61 * * * *"])),
        Schedule(action=ScheduleActionStartWorkflow(tick, "x"),
                 spec=ScheduleSpec(cron_expressions=["* * * * *"], time_zone_name="Mars/Olympus")),
        Schedule(action=ScheduleActionStartWorkflow(tick, 1, 2), spec=ScheduleSpec(cron_expressions=["* * * * *"])),
        Schedule(action=ScheduleActionStartWorkflow(tick, "x"), spec=ScheduleSpec(cron_expressions=["* * * * *"]),
                 policy=SchedulePolicy(catchup_window=timedelta(seconds=1))),
    ]
    for schedule in bad:
        with pytest.raises(InputValidationError):
            await client.create_schedule("bad", schedule)
    assert sql("SELECT count(*) FROM cairn.schedules") == [(0,)]
    await client.create_schedule("dup", every(60))
    with pytest.raises(ScheduleAlreadyRunning):
        await client.create_schedule("dup", every(60))
    with pytest.raises(ScheduleNotFound):
        await client.get_schedule_handle("nope").pause()


async def test_catchup_window_skips_old_slots(client, start_worker, sql):
    """After downtime, slots older than the catch-up window are missed, the rest fire."""
    sched = every(60)
    sched.policy = SchedulePolicy(catchup_window=timedelta(minutes=10))
    await client.create_schedule("late", sched)
    # As if no worker had run for an hour.
    sql("UPDATE cairn.schedules SET processed_until = now() - interval '1 hour', next_check_at = now()")
    await start_worker(workflows=[tick])
    await wait_until(lambda: sql("SELECT missed_slots FROM cairn.schedules")[0][0] > 0, timeout=20)
    fired = actions(sql, "late")
    assert 9 <= len(fired) <= 11  # the slots of the last ten minutes only
    assert all(datetime.now(UTC) - r[0] <= timedelta(minutes=10, seconds=5) for r in fired)


async def test_start_delay(client, start_worker, sql):
    await start_worker(workflows=[tick, waits_for_go])
    handle = await client.start(tick, "d", id="delayed", start_delay=timedelta(seconds=1.5))
    assert sql("SELECT status FROM cairn.runs WHERE workflow_id = 'delayed'") == [("running",)]
    await asyncio.sleep(0.7)
    assert [t for (t,) in sql("SELECT type FROM cairn.history WHERE run_id = %s", (handle.run_id,))] == \
        ["WorkflowStarted"]
    assert await handle.result(timeout=10) == "tick d"
    started, first_task = sql("SELECT at FROM cairn.history WHERE run_id = %s ORDER BY seq LIMIT 2",
                              (handle.run_id,))
    assert first_task[0] - started[0] >= timedelta(seconds=1.5)
    # Signal-with-start: the signal is recorded at once and the delay still applies.
    h2 = await client.signal_with_start(waits_for_go, id="sws", signal="go", signal_payload="now",
                                        start_delay=timedelta(seconds=1.5))
    await asyncio.sleep(0.7)
    assert sql("SELECT count(*) FROM cairn.inbox WHERE run_id = %s", (h2.run_id,)) == [(1,)]
    assert sql("SELECT count(*) FROM cairn.history WHERE run_id = %s", (h2.run_id,)) == [(1,)]
    assert await h2.result(timeout=10) == ["now"]
    with pytest.raises(InputValidationError):
        await client.start(tick, "d", start_delay=-1)


async def test_cli(db_url, start_worker, sql):
    await start_worker(workflows=[tick])
    made = json.loads(ok(await cairn_in_thread(db_url, "schedule", "create", "c1", "tick", "--input", '"cli"',
                                               "--cron", "0 9 * * MON-FRI", "--time-zone", "Europe/Paris",
                                               "--overlap", "buffer_all", "--note", "weekday mornings", "--json")))
    assert made["spec"]["cron_expressions"] == ["0 9 * * MON-FRI"]
    assert made["policy"]["overlap"] == "buffer_all"
    assert all(datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Paris")).hour == 9
               for t in made["info"]["next_action_times"])
    assert "c1" in ok(await cairn_in_thread(db_url, "schedule", "list"))
    ok(await cairn_in_thread(db_url, "schedule", "trigger", "c1"))
    await wait_until(lambda: [r[1:3] for r in actions(sql, "c1")] == [("trigger", "started")], timeout=10)
    text = ok(await cairn_in_thread(db_url, "schedule", "describe", "c1"))
    assert "weekday mornings" in text
    assert "trigger" in text
    ok(await cairn_in_thread(db_url, "schedule", "pause", "c1", "--note", "holidays"))
    assert json.loads(ok(await cairn_in_thread(db_url, "schedule", "describe", "c1", "--json")))["state"] == {
        "paused": True, "note": "holidays"}
    ok(await cairn_in_thread(db_url, "schedule", "unpause", "c1"))
    ok(await cairn_in_thread(db_url, "schedule", "delete", "c1", "--json"))
    bad_input(await cairn_in_thread(db_url, "schedule", "describe", "c1"), "no schedule with id")
    bad_input(await cairn_in_thread(db_url, "schedule", "create", "c2", "tick", "--cron", "61 * * * *"),
              "bad cron expression")
    bad_input(await cairn_in_thread(db_url, "schedule", "create", "c2", "tick", "--every", "5 parsecs"), "--every")
    bad_input(await cairn_in_thread(db_url, "schedule", "create", "c2", "tick"), "cron expression or an interval")
    bad_input(await cairn_in_thread(db_url, "start", "tick", "--input", '"x"', "--start-delay", "-1"))
    assert sql("SELECT count(*) FROM cairn.schedules") == [(0,)]


async def test_a_failing_schedule_does_not_hold_up_the_others(client, start_worker, sql, caplog):
    await client.create_schedule("broken", every(1))
    sql("UPDATE cairn.schedules SET action = action - 'workflow_type' WHERE schedule_id = 'broken'")
    await client.create_schedule("fine", every(1))
    await start_worker(workflows=[tick])
    await wait_until(lambda: len(actions(sql, "fine")) >= 3, timeout=20)
    assert actions(sql, "broken") == []  # its passes rolled back
    [(deferred,)] = sql("SELECT next_check_at > now() + interval '5 seconds' FROM cairn.schedules "
                        "WHERE schedule_id = 'broken'")
    assert deferred
    assert any("schedule broken: a pass failed" in r.getMessage() for r in caplog.records)


async def test_sync_client_start_delay(db_url, start_worker, sql):
    await start_worker(workflows=[tick])

    def script() -> tuple[str, str]:
        with SyncClient(db_url) as sync:
            handle = sync.start(tick, "sync", id="sync-delayed", start_delay=1.0)
            return handle.result(timeout=20), handle.run_id

    result, run_id = await asyncio.to_thread(script)
    assert result == "tick sync"
    [(gap,)] = sql("SELECT max(at) FILTER (WHERE seq = 2) - max(at) FILTER (WHERE seq = 1) FROM cairn.history "
                   "WHERE run_id = %s", (run_id,))
    assert gap >= timedelta(seconds=1)
