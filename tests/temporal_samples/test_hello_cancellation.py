"""samples-python hello/hello_cancellation.py, ported: the activity heartbeats until the run is
cancelled, the workflow's ``finally`` runs the cleanup activity, the result raises, and the
activity's thread gets ``CancelledError`` from its next heartbeat before the worker stops."""

from __future__ import annotations

from support import events

from . import hello_cancellation


async def test_hello_cancellation_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_cancellation.main(db_url)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Heartbeating activity"
    got = lines.index("Got expected exception:  Traceback (most recent call last):")
    assert lines.index("Executing cleanup activity") < got
    assert any(line.startswith("cairn.errors.WorkflowCancelled: ") for line in lines[got:])
    # The worker waits, when it stops, for the thread of the activity it was told is
    # cancelled (as Temporal's does): its "Activity cancelled" is printed before main() returns.
    assert lines.count("Activity cancelled") == 1
    assert set(lines[:lines.index("Activity cancelled")]) <= {"Heartbeating activity", "Executing cleanup activity",
                                                             *lines[got:]}
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-cancellation-workflow-id'")[0]
    types = [t for _, t, _ in events(sql, str(run_id))]
    assert types[-1] == "WorkflowCancelled"
    assert types.index("CancelRequested") < types.index("ActivityCancelRequested") < types.index("ActivityCompleted")
