"""Issue 14 under faults: the small LLM storm of test_llm_storm.py, at default settings,
while a worker process is killed, the workers' connections are terminated and Postgres
restarts.

Three ``cairn worker`` processes at their defaults (``-v`` only for the logs) on a private
Postgres this test owns, a hundred ``llm_flows.storm_chain`` runs against the fake
provider in storm mode (30 % 500s, 429 bursts with Retry-After) with an rpm limit of its
own that the provider file states as the fleet's ``rpm``; each answer takes a moment, so
calls are in flight when the faults strike. Mid-storm, one after another:

1. ``kill -9`` of the worker with the most attempts leased, and a replacement started;
2. ``pg_terminate_backend`` of every worker session;
3. ``pg_ctl stop -m immediate``, and start again 5 s later.

Asserted from the database and the provider's request log: every run completes, no
activity outcome is recorded twice (the invariant checker over every history), no
half-open period lets more than ``permitted_calls_in_half_open`` requests reach the
provider, no span of the rpm window holds more requests than the limit, and a call is
answered 200 twice only if it was in flight on the killed worker (at most as many as were
in flight: measured and asserted). The survivors never exit; PoolTimeouts and tracebacks
in the workers' logs fail the test (a lost connection is a one-line warning), and so does
an outcome a worker gave up writing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import llm_flows as lf
import pytest
from acceptance_support import STORM, STORM_WORKFLOWS, most_in_window, providers_file, run_storm, storm_calls

from cairn.llm import fake as f
from cairn.store import db
from cairn.verify import verify
from support import PrivatePostgres, WorkerProc, query, wait_for

pytestmark = pytest.mark.acceptance

WORKERS = 3
RPM, RPM_WINDOW_SECONDS = 150, 10.0  # the provider's limit, and the fleet's rpm in the providers file
LATENCY_SECONDS = 0.2  # how long each answer takes: calls are in flight at the provider
# When the faults strike (seconds into the storm; each waits for the previous one): the
# kill first, as the first calls are made, since its attempts wait out the default 30 s
# lease; the others between the first two 429 bursts (3-5 s and 11-13 s in).
KILL_AT, TERMINATE_AT, RESTART_AT = 1.0, 6.0, 9.0
OUTAGE_SECONDS = 5.0  # how long Postgres stays down: longer than a worker used to retry an outcome (3 s)
MIN_IN_FLIGHT = 2  # the kill waits for a worker with at least this many attempts in flight
STORM_OPTIONS = {**STORM, "rpm": RPM, "rpm_window": RPM_WINDOW_SECONDS}
COMPLETION_WAIT_SECONDS = 240.0  # generous (a loaded machine): the storm alone, plus the kill's 30 s lease


def leased_calls(url: str, worker: str) -> frozenset[str]:
    """The call keys of the attempts leased to ``worker`` (from their chat requests)."""
    keys = {f.call_key(args[0]["request"]) for (args,) in query(
        url, "SELECT input FROM cairn.activity_tasks WHERE lease_owner = %s", (worker,))}
    assert None not in keys, "every storm call carries its key"
    return frozenset(k for k in keys if k is not None)


class Faults:
    """The three faults, each struck once, in order, when its time has come (``__call__``
    is ``run_storm``'s ``during``)."""

    def __init__(self, url: str, pg: PrivatePostgres, fleet: list[WorkerProc], start: Any) -> None:
        self.url, self.pg, self.fleet, self.start = url, pg, fleet, start
        self.in_flight: frozenset[str] = frozenset()  # the calls leased to the killed worker
        self.killed_at: float | None = None
        self.terminated = 0
        self.restarted = False
        self.struck: dict[str, tuple[float, int]] = {}  # fault -> (seconds into the storm, runs still open)
        self.elapsed = 0.0

    def _strike(self, fault: str) -> None:
        open_runs = query(self.url, "SELECT count(*) FROM cairn.runs WHERE status <> 'completed'")[0][0]
        self.struck[fault] = (round(self.elapsed, 1), int(open_runs))

    def __call__(self, elapsed: float) -> None:
        self.elapsed = elapsed
        if self.killed_at is None and elapsed >= KILL_AT:
            self.kill()
        elif not self.terminated and self.killed_at is not None and elapsed >= TERMINATE_AT:
            self.terminate()
        elif not self.restarted and self.terminated and elapsed >= RESTART_AT:
            self.restart()

    def kill(self) -> None:
        def leased(w: WorkerProc) -> int:
            return int(query(self.url, "SELECT count(*) FROM cairn.activity_tasks WHERE lease_owner = %s",
                             (w.name,))[0][0])

        victim = max(self.fleet, key=leased)
        os.kill(victim.pid, signal.SIGSTOP)  # frozen, so that what it has leased stays leased
        if leased(victim) < MIN_IN_FLIGHT:
            os.kill(victim.pid, signal.SIGCONT)
            return  # not now: look again at the next tick
        self._strike("kill")
        victim.kill9()
        self.killed_at = time.time()
        # Its sessions end with it (a statement it had sent runs to its end first); what
        # stays leased to it then is every attempt whose outcome it had not recorded: the
        # calls it had in flight, the only ones that may have been answered and not recorded.
        wait_for("the killed worker's sessions to end", lambda: not query(
            self.url, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (f"cairn-{victim.name}",)))
        self.in_flight = leased_calls(self.url, victim.name)
        self.fleet.append(self.start(f"{victim.name}b", wait=False))  # the storm goes on meanwhile

    def terminate(self) -> None:
        self._strike("terminate")
        rows = query(self.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name LIKE 'cairn-%%' AND pid <> pg_backend_pid()")
        self.terminated = sum(1 for (ok,) in rows if ok)
        assert self.terminated, "the workers had sessions to terminate"

    def restart(self) -> None:
        self._strike("restart")
        self.pg.crash()
        time.sleep(OUTAGE_SECONDS)
        self.pg.start()
        self.restarted = True


@pytest.mark.timeout(COMPLETION_WAIT_SECONDS + 90)
def test_llm_storm_holds_through_a_kill_terminated_connections_and_a_postgres_restart(
        workers, private_pg, fake_llm, tmp_path, monkeypatch):
    pg = private_pg
    with db.connect_sync(pg.url()) as c:
        c.execute("CREATE DATABASE storm")
    url = pg.url("storm")
    db.migrate(url)
    monkeypatch.setenv("CAIRN_LLM_PROVIDERS", providers_file(tmp_path, fake_llm.url, rpm=RPM,
                                                             rate_window_seconds=RPM_WINDOW_SECONDS))

    def start(name: str, *, wait: bool = True) -> WorkerProc:
        return workers(name, "-m", "llm_flows", defaults=True, verbose=1, url=url, wait=wait)

    fleet = [start(f"fault{i}") for i in range(WORKERS)]
    breaker = f"fake:{lf.MODEL}:{fake_llm.url}"
    fake_llm.script([], default=f.hang(LATENCY_SECONDS))
    fake_llm.storm(**STORM_OPTIONS)
    faults = Faults(url, pg, fleet, start)
    figures = run_storm(url, fake_llm, lambda: fleet, breaker, timeout=COMPLETION_WAIT_SECONDS, during=faults,
                        explained=lambda: faults.in_flight)
    log = fake_llm.requests()
    busiest = most_in_window([r["time"] for r in log], RPM_WINDOW_SECONDS)
    report = asyncio.run(verify(url, workflows=[lf.storm_chain]))
    print(figures.summary().split("\n--- ")[0])  # the figures of a passing run, for `pytest -s`
    print(f"faults: {len(faults.in_flight)} calls in flight at the kill, {faults.terminated} sessions terminated, "
          f"Postgres restarted: {faults.restarted}; (seconds in, runs open) at each fault {faults.struck}; paid twice "
          f"{figures.paid_twice}; most requests in {RPM_WINDOW_SECONDS:g} s: {busiest} (limit {RPM})")

    assert faults.killed_at is not None, "the kill struck"
    assert faults.terminated, "the terminations struck"
    assert faults.restarted, "the restart struck"
    assert all(n > 0 for _, n in faults.struck.values()), f"each fault struck mid-storm: {faults.struck}"
    assert [v.invariant for v in report.violations] == [], report.violations  # no outcome recorded twice
    assert figures.calls == storm_calls(STORM_WORKFLOWS), "every call reached the provider, each with its key"
    assert len({r["call"] for r in log if r["status"] == 200}) == figures.calls, "every call was answered"
    assert set(figures.paid_twice) <= faults.in_flight, "a call paid twice was in flight on the killed worker"
    assert busiest <= RPM, f"{busiest} requests within {RPM_WINDOW_SECONDS:g} s, above the fleet's rpm {RPM}"
    assert figures.why["rpm"] == 0, "the provider never refused for its rpm limit"
    assert figures.why["burst"] > 0, f"the run met a 429 burst: {figures.summary()}"
    assert figures.why["fail"] > 0, f"the run met 500s: {figures.summary()}"
