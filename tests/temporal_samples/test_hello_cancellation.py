"""samples-python hello/hello_cancellation.py, ported: the activity heartbeats until the run is
cancelled, the workflow's ``finally`` runs the cleanup activity, the result raises, and the
activity's thread gets ``CancelledError`` from its next heartbeat."""

from __future__ import annotations

from support import events, wait_until

from . import hello_cancellation


async def test_hello_cancellation_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_cancellation.main(db_url)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Heartbeating activity"
    got = lines.index("Got expected exception:  Traceback (most recent call last):")
    assert lines.index("Executing cleanup activity") < got
    assert any(line.startswith("cairn.errors.WorkflowCancelled: ") for line in lines[got:])
    # Cairn's worker does not wait, when it stops, for the thread of an activity it was told
    # is cancelled: the thread sees CancelledError at its next heartbeat, possibly after
    # main() returned (Temporal's worker waits for it). Wait for that line here.
    printed = [out]

    def cancelled() -> bool:
        printed.append(capsys.readouterr().out)
        return "Activity cancelled" in "".join(printed)

    await wait_until(cancelled, what="the activity's 'Activity cancelled'")
    later = "".join(printed[1:]).splitlines()
    assert set(later) <= {"Heartbeating activity", "Activity cancelled"}
    assert lines.count("Activity cancelled") + later.count("Activity cancelled") == 1
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-cancellation-workflow-id'")[0]
    types = [t for _, t, _ in events(sql, str(run_id))]
    assert types[-1] == "WorkflowCancelled"
    assert types.index("CancelRequested") < types.index("ActivityCancelRequested") < types.index("ActivityCompleted")
