"""samples-python polling/infrequent, ported: each poll is an activity attempt, retried on a
fixed interval (backoff coefficient 1) until the fifth succeeds; the history records one
activity, not the failed polls."""

from __future__ import annotations

import inspect
from datetime import timedelta

from support import events

from . import polling_infrequent, polling_test_service


async def test_polling_infrequent_prints_what_the_sample_prints(db_url, sql, capsys):
    polling_test_service.attempts.clear()  # the sample's service counts per process
    await polling_infrequent.main(db_url, poll_interval_seconds=0.2)  # the sample polls every 60 s
    assert capsys.readouterr().out.splitlines() == [
        *(f"Attempt {i} of 5 to invoke service" for i in range(1, 6)),
        "Result: Hello, World!",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'infrequent-activity-retry'")[0]
    history = events(sql, str(run_id))
    (scheduled,) = [d for _, t, d in history if t == "ActivityScheduled"]
    policy = scheduled["options"]["retry_policy"]
    assert (policy["backoff_coefficient"], policy["initial_interval"], policy["jitter"]) == (1.0, "PT0.2S", 0.0)
    (completed,) = [d for _, t, d in history if t == "ActivityCompleted"]
    assert completed["attempt"] == 5
    assert "ActivityFailed" not in [t for _, t, _ in history]


def test_the_sample_polls_every_minute_by_default():
    assert inspect.signature(polling_infrequent.main).parameters["poll_interval_seconds"].default == 60
    assert timedelta(seconds=inspect.signature(polling_infrequent.GreetingWorkflow.run)
                     .parameters["poll_interval_seconds"].default) == timedelta(minutes=1)
