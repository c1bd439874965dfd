"""samples-python polling/frequent, ported: one activity attempt polls the service every
second, heartbeating, until its fifth call succeeds."""

from __future__ import annotations

from support import events

from . import polling_frequent, polling_test_service


async def test_polling_frequent_prints_what_the_sample_prints(db_url, sql, capsys):
    polling_test_service.attempts.clear()  # the sample's service counts per process
    await polling_frequent.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        *(f"Attempt {i} of 5 to invoke service" for i in range(1, 6)),
        "Result: Hello, World!",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'frequent-activity-retry'")[0]
    (completed,) = [d for _, t, d in events(sql, str(run_id)) if t == "ActivityCompleted"]
    assert completed["attempt"] == 1  # the polling happens inside one attempt
