"""The pure part of schedules: slots of cron expressions and intervals in a time zone (DST
included), start/end, jitter, the catch-up window, and the overlap policies' decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cairn.errors import InputValidationError
from cairn.options import check_start_delay
from cairn.schedules import (
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    action_workflow_id,
    decide,
    due_slots,
    next_check,
)

NY = ZoneInfo("America/New_York")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_interval_slots_are_aligned_to_the_epoch_with_offset():
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=15), offset=timedelta(minutes=5))])
    got = spec.next_slots(datetime(2026, 1, 1, 10, 7, tzinfo=UTC), 3)
    assert got == [datetime(2026, 1, 1, 10, 20, tzinfo=UTC), datetime(2026, 1, 1, 10, 35, tzinfo=UTC),
                   datetime(2026, 1, 1, 10, 50, tzinfo=UTC)]
    # A slot is strictly after the given time.
    assert spec.next_slots(datetime(2026, 1, 1, 10, 20, tzinfo=UTC), 1) == [datetime(2026, 1, 1, 10, 35, tzinfo=UTC)]


def test_cron_in_a_time_zone():
    spec = ScheduleSpec(cron_expressions=["0 9 * * MON-FRI"], time_zone_name="Europe/Paris")
    got = spec.next_slots(datetime(2026, 1, 2, 12, tzinfo=UTC), 2)  # a Friday
    assert got == [datetime(2026, 1, 5, 8, tzinfo=UTC), datetime(2026, 1, 6, 8, tzinfo=UTC)]  # 09:00 CET


def test_cron_across_dst_spring_forward_and_fall_back():
    # 02:30 does not exist on 2026-03-08 in New York: that day's slot is at the gap's end, once.
    spring = ScheduleSpec(cron_expressions=["30 2 * * *"], time_zone_name="America/New_York")
    got = [t.astimezone(NY) for t in spring.next_slots(datetime(2026, 3, 7, tzinfo=NY), 3)]
    assert [(t.day, t.hour, t.minute) for t in got] == [(7, 2, 30), (8, 3, 0), (9, 2, 30)]
    # 01:30 happens twice on 2026-11-01: the slot is taken once.
    fall = ScheduleSpec(cron_expressions=["30 1 * * *"], time_zone_name="America/New_York")
    got = fall.next_slots(datetime(2026, 10, 31, tzinfo=NY), 3)
    assert [t.astimezone(NY).day for t in got] == [31, 1, 2]
    assert got[2] - got[1] == timedelta(hours=25)  # a day of 25 hours
    # Hourly across the fall-back: every real hour once, 25 slots in that local day.
    hourly = ScheduleSpec(cron_expressions=["0 * * * *"], time_zone_name="America/New_York")
    day = list(hourly.slots(datetime(2026, 11, 1, tzinfo=NY) - timedelta(seconds=1),
                            datetime(2026, 11, 2, tzinfo=NY) - timedelta(seconds=1)))
    assert len(set(day)) == len(day)
    assert len(day) in (24, 25)  # cron's rule for the repeated hour


def test_intervals_ignore_the_time_zone():
    a = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))], time_zone_name="Asia/Kolkata")
    b = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))])
    assert a.next_slots(T0, 5) == b.next_slots(T0, 5)


def test_union_of_specs_and_start_end():
    spec = ScheduleSpec(cron_expressions=["0 * * * *"],
                        intervals=[ScheduleIntervalSpec(every=timedelta(minutes=30))],
                        start_at=T0 + timedelta(minutes=40), end_at=T0 + timedelta(hours=2))
    assert spec.next_slots(T0 - timedelta(days=1), 10) == [
        T0 + timedelta(hours=1), T0 + timedelta(minutes=90), T0 + timedelta(hours=2)]  # 1:00 once


def test_jitter_is_bounded_and_the_same_on_every_worker():
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=1))], jitter=timedelta(seconds=30))
    slots = spec.next_slots(T0, 50)
    jitters = [spec.jitter_of("s", t) for t in slots]
    assert all(timedelta(0) <= j < timedelta(seconds=30) for j in jitters)
    assert len(set(jitters)) > 10
    assert jitters == [spec.jitter_of("s", t) for t in slots]
    assert next_check(spec, "s", T0) == slots[0] + jitters[0]


def test_due_slots_and_the_catchup_window():
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=1))])
    now = T0 + timedelta(hours=1, seconds=30)
    # Down for an hour with a 10-minute window: the last ten slots fire, the 50 before are missed.
    fire, until, missed = due_slots(spec, "s", T0, now, timedelta(minutes=10))
    assert fire == [T0 + timedelta(minutes=m) for m in range(51, 61)]
    assert missed == 50
    assert until == T0 + timedelta(hours=1)
    # Nothing more is due until the next slot.
    assert due_slots(spec, "s", until, now, timedelta(minutes=10)) == ([], until, 0)
    # A pass takes at most `limit` slots; the next one goes on from there.
    fire, until, _ = due_slots(spec, "s", T0, now, timedelta(days=1), limit=7)
    assert len(fire) == 7
    assert until == fire[-1]


def test_due_slots_wait_for_their_jitter():
    spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))], jitter=timedelta(minutes=30))
    slot = T0 + timedelta(hours=1)
    j = spec.jitter_of("s", slot)
    assert due_slots(spec, "s", T0, slot + j - timedelta(microseconds=1), timedelta(days=1))[0] == []
    assert due_slots(spec, "s", T0, slot + j, timedelta(days=1))[0] == [slot]


@pytest.mark.parametrize(("policy", "running", "buffered", "decision", "cancel", "terminate"), [
    ("skip", 0, 0, "start", False, False),
    ("skip", 1, 0, "skip", False, False),
    ("buffer_one", 1, 0, "buffer", False, False),
    ("buffer_one", 1, 1, "skip", False, False),
    ("buffer_all", 1, 5, "buffer", False, False),
    ("buffer_all", 0, 1, "buffer", False, False),  # behind the ones already waiting
    ("cancel_other", 1, 0, "buffer", True, False),
    ("terminate_other", 1, 0, "start", False, True),
    ("allow_all", 3, 0, "start", False, False),
])
def test_overlap_policies(policy, running, buffered, decision, cancel, terminate):
    out = decide(ScheduleOverlapPolicy(policy), running, buffered)
    assert (out.decision, out.cancel_running, out.terminate_running) == (decision, cancel, terminate)


def test_workflow_ids_name_the_slot():
    assert action_workflow_id("wf", datetime(2026, 5, 1, 9, 30, tzinfo=UTC)) == "wf-2026-05-01T09:30:00Z"
    assert action_workflow_id("wf", datetime(2026, 5, 1, 9, 30, 0, 5, tzinfo=UTC)) == "wf-2026-05-01T09:30:00.000005Z"


@pytest.mark.parametrize("spec", [
    ScheduleSpec(),
    ScheduleSpec(cron_expressions=["not cron"]),
    ScheduleSpec(cron_expressions=["* * * * *"], time_zone_name="Nowhere/City"),
    ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(0))]),
    ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(minutes=1), offset=timedelta(minutes=2))]),
    ScheduleSpec(cron_expressions=["* * * * *"], jitter=timedelta(seconds=-1)),
    ScheduleSpec(cron_expressions=["* * * * *"], start_at=datetime(2026, 1, 1)),  # naive
    ScheduleSpec(cron_expressions=["* * * * *"], start_at=T0, end_at=T0 - timedelta(days=1)),
])
def test_bad_specs(spec):
    with pytest.raises(InputValidationError):
        spec.check()


def test_bad_policies_and_delays():
    with pytest.raises(InputValidationError):
        SchedulePolicy(overlap="sometimes").check()  # type: ignore[arg-type]
    with pytest.raises(InputValidationError):
        SchedulePolicy(catchup_window=timedelta(seconds=1)).check()
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(InputValidationError):
            check_start_delay(bad)  # type: ignore[arg-type]
    assert check_start_delay(timedelta(seconds=2)) == 2.0
    assert check_start_delay(0) is None


def test_spec_round_trips_through_json():
    spec = ScheduleSpec(cron_expressions=["0 9 * * *"], intervals=[ScheduleIntervalSpec(timedelta(hours=2),
                                                                                       timedelta(minutes=5))],
                        time_zone_name="Europe/Paris", jitter=timedelta(seconds=9), start_at=T0,
                        end_at=T0 + timedelta(days=9))
    assert ScheduleSpec.from_json(spec.to_json()) == spec
    policy = SchedulePolicy(ScheduleOverlapPolicy.BUFFER_ALL, timedelta(minutes=5))
    assert SchedulePolicy.from_json(policy.to_json()) == policy
