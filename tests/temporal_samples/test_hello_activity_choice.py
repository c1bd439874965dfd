"""samples-python hello/hello_activity_choice.py, ported: the IntEnum picks one activity per
item, in the list's order."""

from __future__ import annotations

from support import events

from . import hello_activity_choice


async def test_hello_activity_choice_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_activity_choice.main(db_url)
    assert capsys.readouterr().out.splitlines() == [
        "Order result: Ordered 8 Apples...Ordered 5 Bananas...Ordered 1 Cherries...Ordered 4 Oranges...",
    ]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-activity-choice-workflow-id'")[0]
    scheduled = [d["activity_type"] for _, t, d in events(sql, str(run_id)) if t == "ActivityScheduled"]
    assert scheduled == ["order_apples", "order_bananas", "order_cherries", "order_oranges"]
