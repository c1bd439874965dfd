"""A run id names a run only together with its namespace and workflow id (issue 15, A2).

Tenant A's run ids, given to tenant B's client (or to A's own client with another
workflow id), are "not found" like an unknown id, on every surface: the handle's
operations, the CLI's ``--run-id``, the web view's ``?run_id=``. Nothing of A's changes,
checked from the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cairn import Client, WorkflowNotFound, workflow
from support import bad_input, cairn

from .ui_support import ui_server

WORKFLOW_ID = "x"


@workflow.defn
async def isolated(label: str) -> str:
    workflow.set_query_handler("whoami", lambda: label)
    await workflow.wait_signal("go")
    return label


def snapshot(sql: Callable[..., list[tuple[Any, ...]]]) -> list[Any]:
    """Every run (namespace, workflow id, status) and the size of every table a write would touch."""
    return [sql("SELECT run_id, namespace, workflow_id, status FROM cairn.runs ORDER BY run_id"),
            *(sql(f"SELECT count(*) FROM cairn.{t}") for t in (
                "history", "inbox", "workflow_tasks", "activity_tasks", "query_requests", "timers"))]


@pytest.fixture
async def tenant_a(db_url: str) -> dict[str, str]:
    """Tenant A's runs: ``x`` open, ``done`` terminated; B has its own open ``x`` too."""
    async with await Client.connect(db_url, namespace="tenant-a") as a, \
            await Client.connect(db_url, namespace="tenant-b") as b:
        open_run = await a.start(isolated, "a", id=WORKFLOW_ID)
        done = await a.start(isolated, "a", id="done")
        await done.terminate("closed for the test")
        await b.start(isolated, "b", id=WORKFLOW_ID)
    assert open_run.run_id is not None
    assert done.run_id is not None
    return {"open": open_run.run_id, "done": done.run_id}


async def test_handle_operations_with_another_namespaces_run_id(db_url, sql, tenant_a):
    before = snapshot(sql)
    async with await Client.connect(db_url, namespace="tenant-b") as b, \
            await Client.connect(db_url, namespace="tenant-a") as a:
        # (client, workflow id, run id): another namespace, with and without an id of its
        # own; the right namespace with another workflow id.
        foreign = [(b, WORKFLOW_ID, tenant_a["open"]), (b, "done", tenant_a["done"]),
                   (b, "nothing-here", tenant_a["open"]), (a, "done", tenant_a["open"])]
        operations: dict[str, Callable[[Any], Any]] = {
            "describe": lambda h: h.describe(),
            "history": lambda h: h.history(),
            "result": lambda h: h.result(timeout=5),
            "stream": lambda h: anext(h.stream()),
            "signal": lambda h: h.signal("go"),
            "query": lambda h: h.query("whoami", timeout=5),
            "cancel": lambda h: h.cancel("cross-tenant"),
            "terminate": lambda h: h.terminate("cross-tenant"),
            "reset": lambda h: h.reset(to_seq=1),
            "retry": lambda h: h.retry(),
        }
        for client, workflow_id, run_id in foreign:
            for name, operation in operations.items():
                with pytest.raises(WorkflowNotFound) as caught:
                    await operation(client.get_handle(workflow_id, run_id))
                assert "tenant-a" not in str(caught.value), name  # nothing says where it lives
            with pytest.raises(WorkflowNotFound):
                await client.signal(workflow_id, "go", run_id=run_id)
            with pytest.raises(WorkflowNotFound):
                await client.query(workflow_id, "whoami", run_id=run_id, timeout=5)
        assert snapshot(sql) == before
        # The owner, with the run's own workflow id, still reaches it.
        assert (await a.get_handle(WORKFLOW_ID, tenant_a["open"]).describe()).status == "running"
        assert (await a.get_handle("done", tenant_a["done"]).describe()).status == "terminated"


def test_cli_run_id_of_another_namespace_is_not_found(db_url, sql, tenant_a):
    before = snapshot(sql)
    run = tenant_a["open"]
    for args in (["terminate", WORKFLOW_ID], ["cancel", WORKFLOW_ID], ["describe", WORKFLOW_ID],
                 ["history", WORKFLOW_ID], ["history", "--follow", WORKFLOW_ID], ["signal", WORKFLOW_ID, "go"],
                 ["query", WORKFLOW_ID, "whoami", "--timeout", "5"], ["reset", WORKFLOW_ID, "--to-seq", "1"],
                 ["replay", WORKFLOW_ID, "-m", __name__]):
        bad_input(cairn(db_url, "--namespace", "tenant-b", *args, "--run-id", run), "no workflow run")
    bad_input(cairn(db_url, "--namespace", "tenant-b", "retry", "done", "--run-id", tenant_a["done"]),
              "no workflow run")
    bad_input(cairn(db_url, "--namespace", "tenant-a", "terminate", "done", "--run-id", run), "no workflow run")
    assert snapshot(sql) == before
    assert sql("SELECT status FROM cairn.runs WHERE run_id = %s", (run,)) == [("running",)]


async def test_web_view_run_id_of_another_namespace_is_404(db_url, tenant_a):
    async with ui_server(db_url, namespace="tenant-b") as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        for path in (f"/runs/{WORKFLOW_ID}", f"/api/runs/{WORKFLOW_ID}", "/runs/done"):
            for run_id in tenant_a.values():
                got = await http.get(path, params={"run_id": run_id})
                assert got.status_code == 404, (path, got.text)
        assert (await http.get(f"/runs/{WORKFLOW_ID}")).status_code == 200  # B's own x
    async with ui_server(db_url, namespace="tenant-a") as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        assert (await http.get(f"/runs/{WORKFLOW_ID}", params={"run_id": tenant_a["open"]})).status_code == 200
        assert (await http.get("/runs/done", params={"run_id": tenant_a["open"]})).status_code == 404
