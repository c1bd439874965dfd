"""samples-python message_passing/safe_message_handlers, ported: the worker runs; the
starter starts a cluster, assigns six jobs and deletes them by concurrent updates (the
workflow's lock serialises them), signals the shutdown and prints the result. A second test
drives the same workflow in the sample's continue-as-new mode until it has continued."""

from __future__ import annotations

import asyncio
import re

from support import events, wait_until

from . import safe_message_handlers as sample


async def test_safe_message_handlers_prints_what_the_sample_prints(db_url, sql, capsys):
    interrupt = asyncio.Event()
    worker = asyncio.create_task(sample.worker_main(db_url, interrupt))
    try:
        await sample.main(False, db_url)
    finally:
        interrupt.set()
        await worker
    lines = capsys.readouterr().out.splitlines()
    # The starter's lines, in order; the activities print in the worker meanwhile.
    assert [line for line in lines if not line.startswith(("Assigning nodes", "Deallocating nodes", "No new bad"))] == [
        "Starting cluster",
        "Cluster started with 25 nodes",
        "Assigning jobs to nodes...",
        "Sleeping for 1 second(s)",
        "Deleting jobs...",
        "Cluster shut down successfully. It had 0 nodes assigned at the end.",
    ]
    # One health check, when the cluster started (every 600 s after that): nothing assigned yet.
    assert lines.count("No new bad nodes found.") == 1
    assigned = {}
    for line in lines:
        if m := re.fullmatch(r"Assigning nodes \['(node-\d+)', '(node-\d+)'\] to job (task-\d)", line):
            assigned[m[3]] = [m[1], m[2]]
    # Six jobs, two nodes each, none twice: the lock kept the assignments apart.
    assert sorted(assigned) == [f"task-{i}" for i in range(6)]
    assert sorted(n for nodes in assigned.values() for n in nodes) == sorted(f"node-{i}" for i in range(12))
    deallocated = {m[2]: m[1] for line in lines
                   if (m := re.fullmatch(r"Deallocating nodes (\[.*\]) from job (task-\d)", line))}
    assert deallocated == {job: str(nodes) for job, nodes in assigned.items()}
    [(run_id, status)] = sql("SELECT run_id::text, status FROM cairn.runs")
    assert status == "completed"
    types = [t for _, t, _ in events(sql, run_id)]
    assert types.count("UpdateAccepted") == types.count("UpdateCompleted") == 13
    assert types.count("SignalReceived") == 1


async def test_the_cluster_continues_as_new_with_its_state(client, start_worker, sql, capsys):
    """The sample's ``--test-continue-as-new`` mode: a health check each second grows the
    history past 120 events, and the run continues as new with its state (the nodes and
    jobs), after its handlers finished. The starter's own 10 s may end before that (Cairn's
    histories are shorter than Temporal's), so this waits for it instead."""
    await start_worker(workflows=[sample.ClusterManagerWorkflow],
                       activities=[sample.assign_nodes_to_job, sample.unassign_nodes_for_job,
                                   sample.find_bad_nodes, sample.start_cluster],
                       queues=["safe-message-handlers-task-queue"])
    wf = await client.start(sample.ClusterManagerWorkflow.run, sample.ClusterManagerInput(test_continue_as_new=True),
                            id="ClusterManagerWorkflow-can", queue="safe-message-handlers-task-queue")
    await wf.execute_update(sample.ClusterManagerWorkflow.wait_until_cluster_started)
    await asyncio.gather(*(wf.execute_update(sample.ClusterManagerWorkflow.assign_nodes_to_job,
                                             sample.ClusterManagerAssignNodesToJobInput(total_num_nodes=2,
                                                                                        job_name=f"task-{i}"))
                           for i in range(6)))
    await wait_until(lambda: sql("SELECT count(*) FROM cairn.runs")[0][0] >= 2, timeout=90,
                     what="the run continued as new")
    await asyncio.gather(*(wf.execute_update(sample.ClusterManagerWorkflow.delete_job,
                                             sample.ClusterManagerDeleteJobInput(job_name=f"task-{i}"))
                           for i in range(6)))
    await wf.signal(sample.ClusterManagerWorkflow.shutdown_cluster)
    result = await wf.result()
    assert result.num_currently_assigned_nodes == 0

    runs = sql("SELECT run_id::text, status FROM cairn.runs ORDER BY created_at")
    assert [s for _, s in runs] == ["continued_as_new"] * (len(runs) - 1) + ["completed"]
    first = events(sql, runs[0][0])
    assert first[-1][1] == "WorkflowContinuedAsNew"
    assert len(first) > 120
    # Handlers finished before it continued: every accepted update completed in that run.
    assert [t for _, t, _ in first].count("UpdateAccepted") == [t for _, t, _ in first].count("UpdateCompleted")
    [state] = [d["input"][0]["state"] for _, t, d in events(sql, runs[1][0]) if t == "WorkflowStarted"]
    assert state["cluster_started"] is True
    assert sorted(state["jobs_assigned"]) == [f"task-{i}" for i in range(6)]
    assigned = [n for n, job in state["nodes"].items() if job is not None]  # a job's name, or "BAD!"
    assert sorted(assigned) == sorted(f"node-{i}" for i in range(12))
    # (The new run's ``run`` starts the cluster again and clears the nodes: the sample's logic.)
    assert capsys.readouterr().out.count("Assigning nodes") == 6
