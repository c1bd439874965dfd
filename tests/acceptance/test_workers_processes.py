"""Workers you can see (issue 18, item 6), with worker processes: they register and
heartbeat (``cairn workers``), a graceful stop marks a worker stopped, a ``kill -9``'d one
goes stale once its liveness window passes, and ``cairn start`` (with ``--wait``),
``describe`` and the web view say when no live worker serves a run's workflow type or a
pending activity's type, until one does.

Workers heartbeat every HEARTBEAT seconds, so a killed one is stale three periods later;
the tests poll the database for it, never sleep."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from acceptance_support import HERE, cairn_cli, run_status

import cairn
from integration.ui_support import ui_server
from support import CAIRN, TIMEOUT, clean_env, query, wait_for

pytestmark = pytest.mark.acceptance

HEARTBEAT = "1.0"  # seconds: a killed worker is stale 3 s after its last heartbeat


def fast(*extra: str) -> tuple[str, ...]:
    return ("--heartbeat-interval", HEARTBEAT, *extra)


def listed(db_url: str, *options: str) -> dict[str, dict[str, object]]:
    ran = cairn_cli("workers", "--json", *options, db_url=db_url)
    assert ran.code == 0, ran.err
    return {w["identity"]: w for w in json.loads(ran.out)}


def stale(db_url: str, identity: str) -> bool:
    """Whether the worker's liveness window has passed, by the database's clock."""
    return query(db_url, "SELECT live_until < now() FROM cairn.workers WHERE identity = %s", (identity,)) == [(True,)]


def test_workers_register_heartbeat_stop_and_go_stale(db_url, workers):
    a = workers("a", *fast("--workflow-concurrency", "2", "--activity-concurrency", "7"), module="registry_a")
    b = workers("b", *fast(), module="registry_b")

    live = listed(db_url)
    assert sorted(live) == ["a", "b"]
    wa = live["a"]
    assert (wa["status"], wa["host"], wa["pid"], wa["queues"]) == ("live", socket.gethostname(), a.pid, ["default"])
    assert (wa["workflow_types"], wa["activity_types"]) == (["needs_c", "split"], ["act_a"])
    assert (wa["workflow_slots"], wa["activity_slots"], wa["version"]) == (2, 7, cairn.__version__)
    assert wa["stopped_at"] is None
    assert (live["b"]["workflow_types"], live["b"]["activity_types"], live["b"]["pid"]) == \
        (["other_kind"], ["act_b"], b.pid)
    assert listed(db_url, "--queue", "elsewhere") == {}
    # It heartbeats: the row's heartbeat moves on.
    first = query(db_url, "SELECT heartbeat_at FROM cairn.workers WHERE identity = 'a'")[0][0]
    wait_for("a's next heartbeat", lambda: query(
        db_url, "SELECT heartbeat_at > %s FROM cairn.workers WHERE identity = 'a'", (first,)) == [(True,)], procs=(a,))
    ran = cairn_cli("workers", db_url=db_url)
    assert ran.code == 0, ran.err
    header, *lines = ran.out.splitlines()
    assert header.split() == ["IDENTITY", "STATUS", "HOST:PID", "QUEUES", "WORKFLOWS", "ACTIVITIES", "WF", "SLOTS",
                              "ACT", "SLOTS", "VERSION", "HEARTBEAT"]
    row = lines[0].split()
    assert row[:6] == ["a", "live", f"{socket.gethostname()}:{a.pid}", "default", "needs_c,split", "act_a"]
    assert row[6].endswith("/2"), row  # workflow slots in use / total
    assert row[7].endswith("/7"), row

    # A graceful stop marks the row stopped; it leaves the live listing, not --all.
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=TIMEOUT) == 0, b.log()
    assert sorted(listed(db_url)) == ["a"]
    gone = listed(db_url, "--all")["b"]
    assert gone["status"] == "stopped"
    assert gone["stopped_at"] is not None

    # kill -9: nothing marks it, its row goes stale once its window passes.
    a.kill9()
    wait_for("a to go stale", lambda: stale(db_url, "a"))
    assert listed(db_url) == {}
    assert {w: r["status"] for w, r in listed(db_url, "--all").items()} == {"a": "stale", "b": "stopped"}
    ran = cairn_cli("workers", db_url=db_url)
    assert ran.out.strip() == "no live workers (--all shows stale and stopped ones)"

    # Maintenance removes rows gone for over a day (here: as the next worker registers).
    query(db_url, "UPDATE cairn.workers SET heartbeat_at = now() - interval '25 h', "
                  "live_until = now() - interval '25 h', stopped_at = now() - interval '25 h' WHERE identity = 'b'")
    workers("c", *fast(), module="registry_c")
    assert sorted(listed(db_url, "--all")) == ["a", "c"]


async def _pages(db_url: str, workflow_id: str) -> tuple[str, str, dict[str, object]]:
    async with ui_server(db_url) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        run = await http.get(f"/runs/{workflow_id}")
        listing = await http.get("/workers", params={"queue": "default", "all": "1"})
        api = await http.get("/api/workers", params={"all": "1"})
    assert run.status_code == listing.status_code == api.status_code == 200, (run.text, listing.text)
    return run.text, listing.text, api.json()


def start_waiting(db_url: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    """``cairn start ... --wait`` in the background, its stderr to a file."""
    err = tmp_path / "start-wait.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen([CAIRN, "--database-url", db_url, "start", *args, "--wait"], cwd=HERE,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean_env())
    return proc, err


def test_describe_start_and_the_web_view_say_when_no_live_worker_serves_a_run(db_url, workers, tmp_path):
    a = workers("a", *fast(), module="registry_a")  # split (act_a, then act_b), needs_c; act_a
    a.kill9()  # the only worker of split
    wait_for("a to go stale", lambda: stale(db_url, "a"))

    # cairn start warns: the type is registered, but its only worker is gone.
    ran = cairn_cli("start", "split", "--input", "1", "--id", "s1", db_url=db_url)
    assert ran.code == 0, ran.err
    said = f"no live worker serves workflow type 'split' on queue 'default' (last served by worker 'a' at " \
           f"{socket.gethostname()}:{a.pid}, no heartbeat for "
    assert ran.err.startswith(f"warning: {said}"), ran.err
    assert ran.err.rstrip().endswith("; the run waits for one"), ran.err

    ran = cairn_cli("describe", "s1", "--json", db_url=db_url)
    assert ran.code == 0, ran.err
    [u] = json.loads(ran.out)["unserved"]
    assert (u["kind"], u["type"], u["queue"], u["last_worker"]) == ("workflow", "split", "default", "a")
    assert u["message"].startswith(said)
    ran = cairn_cli("describe", "s1", db_url=db_url)
    assert said in ran.out
    assert "it waits for one" in ran.out

    run_page, workers_page, api = asyncio.run(_pages(db_url, "s1"))
    assert '<ul id="unserved"><li>no live worker serves workflow type &#x27;split&#x27; on queue ' in run_page
    assert 'href="/workers?queue=default&amp;all=1"' in run_page
    assert '<tr class="worker" data-status="stale"><td class="id">a</td>' in workers_page
    assert [(w["identity"], w["status"]) for w in api["workers"]] == [("a", "stale")]

    # start --wait says so too, and goes on saying what the run waits for: once a worker of
    # split runs its first step, act_b, which no worker has registered.
    waiting, err = start_waiting(db_url, tmp_path, "split", "--input", "2", "--id", "s2")
    wait_for("start --wait to warn of split", lambda: said in err.read_text())
    a2 = workers("a2", *fast(), module="registry_a")
    act_b = "warning: no live worker serves activity type 'act_b' on queue 'default' " \
            "(no worker has registered it there); the run waits for one"
    wait_for("start --wait to warn of act_b", lambda: act_b in err.read_text(), procs=(a2,))

    # describe stops saying it of split once a live worker serves it; then of act_b.
    ran = cairn_cli("describe", "s1", "--json", db_url=db_url)
    assert [(u["kind"], u["type"]) for u in json.loads(ran.out)["unserved"]] == [("activity", "act_b")]
    b = workers("b", *fast(), module="registry_b")
    out, _ = waiting.communicate(timeout=TIMEOUT)
    assert waiting.returncode == 0, err.read_text()
    assert json.loads(out) == {"a": a2.pid, "b": b.pid}
    wait_for("s1 to complete", lambda: run_status(db_url, "s1") == "completed", procs=(a2, b))
    ran = cairn_cli("describe", "s1", "--json", db_url=db_url)
    assert json.loads(ran.out)["unserved"] == []
    assert err.read_text().splitlines()[1].startswith(f"warning: {said}"), err.read_text()  # after "started ..."


def test_a_worker_whose_sessions_are_cut_heartbeats_again(db_url, workers):
    """Every session of a worker terminated, its heartbeat's too: the next heartbeat
    reconnects, and the worker stays live."""
    a = workers("a", *fast(), module="registry_a")
    first = query(db_url, "SELECT heartbeat_at FROM cairn.workers WHERE identity = 'a'")[0][0]
    # Terminate every session of the worker (application_name cairn-a): the heartbeat's too.
    query(db_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cairn-a'")
    wait_for("a heartbeat after its sessions were cut", lambda: query(
        db_url, "SELECT heartbeat_at > %s AND live_until > now() FROM cairn.workers WHERE identity = 'a'",
        (first,)) == [(True,)], procs=(a,))
    assert a.alive()
    assert listed(db_url)["a"]["status"] == "live"
