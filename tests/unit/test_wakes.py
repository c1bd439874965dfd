"""The worker's wake-ups: a NOTIFY goes to one idle poller, else it is counted for the
latency lane, which claims as many tasks as NOTIFYs found every poller busy."""

from __future__ import annotations

import asyncio
import random

from cairn.worker.wakes import Wakes


def _wakes(pollers: int) -> Wakes:
    wakes = Wakes(poll_interval=1.0, rng=random.Random(0))
    wakes.workflow = [asyncio.Event() for _ in range(pollers)]
    return wakes


def test_a_notify_wakes_one_idle_poller_and_not_the_lane() -> None:
    wakes = _wakes(2)
    wakes._idle_pollers.extend([0, 1])
    wakes.workflow_notified()
    assert [e.is_set() for e in wakes.workflow] == [True, False]
    assert not wakes.lane.is_set()
    assert wakes.take_lane() == 0


def test_notifies_that_find_every_poller_busy_are_counted_for_the_lane() -> None:
    wakes = _wakes(2)  # none idle: both run a batch
    for _ in range(5):
        wakes.workflow_notified()
    assert wakes.lane.is_set()
    assert wakes.take_lane() == 5  # the lane claims five at once, not one per wake-up
    assert wakes.take_lane() == 0  # and forgets them
    assert wakes.take_pending()  # the pollers look again after their batch too
