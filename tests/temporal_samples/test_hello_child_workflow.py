"""samples-python hello/hello_child_workflow.py, ported: the child composes the greeting
under the id the parent gave it."""

from __future__ import annotations

from . import hello_child_workflow


async def test_hello_child_workflow_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_child_workflow.main(db_url)
    assert capsys.readouterr().out.splitlines() == ["Result: Hello, World!"]
    rows = sql("SELECT c.workflow_id, c.workflow_type, c.status, p.workflow_id FROM cairn.runs c "
               "LEFT JOIN cairn.runs p ON p.run_id = c.parent_run_id ORDER BY c.created_at")
    assert rows == [
        ("hello-child-workflow-workflow-id", "GreetingWorkflow", "completed", None),
        ("hello-child-workflow-workflow-child-id", "ComposeGreetingWorkflow", "completed",
         "hello-child-workflow-workflow-id"),
    ]
