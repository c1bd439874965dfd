"""activity.logger: records logged inside an attempt carry its ids (the worker's end-to-end
case is tests/temporal_samples/test_hello_activity.py); outside an activity it is a plain
logger."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from cairn import activity
from cairn.activity import ActivityInfo

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_records_inside_an_attempt_carry_its_ids(caplog):
    caplog.set_level(logging.INFO, logger="cairn.activity")
    info = ActivityInfo(activity_type="charge", workflow_id="order-1", workflow_type="order", run_id="r-1", seq=3,
                        attempt=2, queue="default", scheduled_at=NOW, started_at=NOW, deadline=None)
    token = activity._current.set(info)
    try:
        activity.logger.info("charging %s", "o-1", extra={"amount": 12})
    finally:
        activity._current.reset(token)
    (record,) = caplog.records
    assert record.getMessage() == "charging o-1"
    assert (record.activity_type, record.attempt, record.workflow_id, record.workflow_type, record.run_id,
            record.amount) == ("charge", 2, "order-1", "order", "r-1", 12)


def test_outside_an_activity_it_logs_without_ids(caplog):
    caplog.set_level(logging.INFO, logger="cairn.activity")
    activity.logger.warning("not in an activity")
    (record,) = caplog.records
    assert record.getMessage() == "not in an activity"
    assert not hasattr(record, "workflow_id")
