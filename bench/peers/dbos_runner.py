#!/usr/bin/env python3
"""DBOS Transact peer runner (see bench/README.md for the protocol).

Driver: launches DBOS once (system-database migrations, queue registration) with
DBOS.listen_queues([]) so it never dequeues work itself, enqueues workflows on a
database-backed DBOS queue, and watches dbos.workflow_status / dbos.operation_outputs.
Workers: this same file with --role worker, one DBOS process each with its own
executor_id ("w<index>"), dequeuing from the queue.

Workflows are @DBOS.workflow, activities are @DBOS.step (a recorded row in
dbos.operation_outputs). Fan-out (W4) is an async workflow that starts 20 async
steps with asyncio.create_task and asyncio.gather (DBOS's documented way to run
steps in parallel; start order is deterministic).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ARGS = C.parse_args()

import _dbos as D  # noqa: E402
from dbos import DBOS  # noqa: E402

QUEUE = "bench"
APP_NAME = "bench"
APP_VERSION = "bench-1"  # fixed so driver, workers and the W6 replacement agree

# ---- tunables (documented knobs; defaults chosen for short tasks) -----------
# polling_interval_sec: how often a worker's queue thread looks for work (DBOS
# default 1.0 s; "smaller values reduce dequeue latency at the cost of more
# database load"). worker_concurrency: max workflows of this queue running at
# once in one process (needed so K>1 processes share a backlog).
POLL_S = C.param_float(ARGS, "dbos_poll_s", 0.01)
WORKER_CONC = int(C.param_float(ARGS, "dbos_worker_concurrency", 100))
RESULT_POLL_S = C.param_float(ARGS, "result_poll_s", 0.005)
STEP_MS = C.param_float(ARGS, "step_ms", 0.0)  # W6 step sleep (0 = trivial steps, like cairn)
POOL = int(C.param_float(ARGS, "dbos_pool", 20))
STYLE = ARGS.params.get("dbos_style", "sync")


def config(executor_id: str) -> dict:
    return D.config(ARGS, APP_NAME, APP_VERSION, executor_id, pool=POOL)


# ---- workflows ------------------------------------------------------------


@DBOS.step()
def inc(x: int) -> int:
    return x + 1


@DBOS.step()
async def ainc(x: int) -> int:
    return x + 1


@DBOS.step()
def slow_inc(x: int, ms: float) -> int:
    time.sleep(ms / 1000.0)
    return x + 1


@DBOS.workflow()
def wf_chain(n: int, x: int) -> int:
    for _ in range(n):
        x = inc(x)
    return x


@DBOS.workflow()
async def awf_chain(n: int, x: int) -> int:
    for _ in range(n):
        x = await ainc(x)
    return x


@DBOS.workflow()
async def wf_fan(n: int, x: int) -> int:
    tasks = [asyncio.create_task(ainc(x + i)) for i in range(n)]
    return sum(await asyncio.gather(*tasks))


@DBOS.workflow()
def wf_long(n: int, ms: float) -> int:
    x = 0
    for _ in range(n):
        x = slow_inc(x, ms)
    return x


# ---- worker ---------------------------------------------------------------


def worker_main() -> int:
    return D.worker_main(config(f"w{ARGS.index}"))


# ---- driver ---------------------------------------------------------------


def connect():
    import psycopg

    return psycopg.connect(C.libpq_dsn(ARGS.dsn), autocommit=True)


def wait_done(r: C.Runner, conn, expected: int, poll: float = 0.05, timeout: float = 1800):
    """Wait for `expected` finished workflows on the bench queue.

    Returns the epoch (seconds) of the last completion as recorded by DBOS.
    """
    deadline = time.time() + timeout
    while True:
        row = conn.execute(
            "select count(*) filter (where status in ('SUCCESS','ERROR')),"
            " count(*) filter (where status = 'ERROR'),"
            " max(coalesce(completed_at, updated_at))"
            " from dbos.workflow_status where queue_name = %s",
            (QUEUE,),
        ).fetchone()
        done, errors, last_ms = row
        if errors:
            raise RuntimeError(f"{errors} workflows failed")
        if done >= expected:
            return last_ms / 1000.0
        if time.time() > deadline:
            raise RuntimeError(f"timeout: {done}/{expected} done")
        r.check_alive()
        time.sleep(poll)


def count_steps(conn) -> int:
    return conn.execute(
        "select count(*) from dbos.operation_outputs o join dbos.workflow_status s"
        " using (workflow_uuid) where s.queue_name = %s",
        (QUEUE,),
    ).fetchone()[0]


def driver(r: C.Runner) -> None:
    a = ARGS
    script = os.path.abspath(__file__)
    wl, n, k = a.workload, a.size, a.workers
    conc = max(WORKER_CONC, n) if wl == "W6" else WORKER_CONC

    DBOS(config=config("driver"))
    DBOS.listen_queues([])  # the driver only enqueues; workers dequeue
    DBOS.launch()
    queue = DBOS.register_queue(
        QUEUE,
        worker_concurrency=conc,
        polling_interval_sec=POLL_S,
        on_conflict="always_update",
    )
    conn = connect()
    r.notes.append(
        f"dbos {C.package_version('dbos')}; Postgres system DB; database-backed Queue "
        f"worker_concurrency={conc}, polling_interval_sec={POLL_S} (default 1.0); "
        f"{k} worker process(es), executor_id w<i>, sync workflows/steps on DBOS's "
        f"thread pool (max_executor_threads unbounded); sys_db_pool_size={POOL}; "
        f"use_listen_notify default (on)"
    )

    def spawn_workers(count: int, first_index: int = 0):
        return [r.spawn(r.self_cmd(script, "worker", first_index + i)) for i in range(count)]

    if wl in ("W1", "W2", "W4"):
        if wl == "W1":
            per, steps = 1, n
        elif wl == "W2":
            per, steps = C.W2_STEPS, n * C.W2_STEPS
        else:
            per, steps = C.W4_FANOUT, n * C.W4_FANOUT
        fn = wf_fan if wl == "W4" else (awf_chain if STYLE == "async" else wf_chain)

        def enqueue() -> None:
            with ThreadPoolExecutor(8) as ex:  # as fast as the driver can
                list(ex.map(lambda i: queue.enqueue(fn, per, i), range(n)))

        seconds = r.drain(enqueue, lambda: spawn_workers(k), lambda: wait_done(r, conn, n))
        got = count_steps(conn)
        r.extra["recorded_steps"] = got
        r.extra["workflows_per_executor"] = dict(
            conn.execute(
                "select executor_id, count(*) from dbos.workflow_status where queue_name = %s"
                " group by 1 order by 1",
                (QUEUE,),
            ).fetchall()
        )
        if got != steps:
            r.notes.append(f"WARNING recorded steps {got} != {steps}")
        if wl == "W4":
            r.notes.append("fan-out: async workflow, 20 async @DBOS.step via asyncio.gather")
        r.emit(steps, seconds)
        return

    if wl == "W3":
        ws = spawn_workers(1)
        r.wait_ready(ws)

        def one(i: int) -> None:
            res = queue.enqueue(wf_chain, 1, i).get_result(polling_interval_sec=RESULT_POLL_S)
            assert res == i + 1, res

        seconds, lat = r.latency_loop(n, one, lambda: conn.execute(C.NEXT_XID_SQL).fetchone()[0])
        r.notes.append(
            f"start = Queue.enqueue from the driver process, result = handle.get_result("
            f"polling_interval_sec={RESULT_POLL_S}) (DBOS polls for results); the worker "
            f"picks work up by polling every {POLL_S}s"
        )
        r.emit(n, seconds, lat)
        return

    if wl == "W5":
        ws = spawn_workers(1)
        r.wait_ready(ws)

        def one(steps: int) -> tuple[float, float]:
            t_epoch = time.time()
            wid = queue.enqueue(wf_chain, steps, 0).get_workflow_id()
            while True:  # light SQL poll; the timings come from DBOS's own timestamps
                st = conn.execute(
                    "select status, started_at_epoch_ms, coalesce(completed_at, updated_at)"
                    " from dbos.workflow_status where workflow_uuid = %s",
                    (wid,),
                ).fetchone()
                if st[0] in ("SUCCESS", "ERROR"):
                    break
                r.check_alive()
                time.sleep(0.02)
            if st[0] != "SUCCESS":
                raise RuntimeError(f"W5 workflow {st[0]}")
            return st[2] / 1000.0 - t_epoch, (st[2] - st[1]) / 1000.0

        C.warmup_w5(ARGS, lambda _wf, steps: one(steps))
        short_wall, short_exec = one(C.W5_SHORT)
        long_wall, long_exec = one(n)
        r.extra.update(
            {
                "short_steps": C.W5_SHORT,
                "short_seconds": round(short_wall, 4),
                "exec_seconds": round(long_exec, 4),
                "short_exec_seconds": round(short_exec, 4),
            }
        )
        r.notes.append(
            "seconds = enqueue to the workflow's completed_at in dbos.workflow_status (includes "
            f"up to one queue poll of {POLL_S}s); extra.exec_seconds = the workflow's own "
            "started_at to completed_at"
        )
        r.emit(n, long_wall)
        return

    if wl == "W6":
        w6(r, queue, conn, spawn_workers, n)
        return

    raise SystemExit(f"unknown workload {wl}")


def w6(r: C.Runner, queue, conn, spawn_workers, n: int) -> None:
    steps_per_wf = 1_000_000  # "long": never finishes during the test
    ws = spawn_workers(1)
    r.wait_ready(ws)
    ids = [queue.enqueue(wf_long, steps_per_wf, STEP_MS).get_workflow_id() for _ in range(n)]
    # Wait until every workflow is PENDING on the worker and has recorded >= 2 steps.
    deadline = time.time() + 120
    while True:
        row = conn.execute(
            "select count(*) from (select workflow_uuid from dbos.operation_outputs"
            " where workflow_uuid = any(%s) group by 1 having count(*) >= 2) t",
            (ids,),
        ).fetchone()
        if row[0] >= n:
            break
        if time.time() > deadline:
            raise RuntimeError(f"only {row[0]}/{n} workflows running")
        r.check_alive()
        time.sleep(0.05)
    time.sleep(0.5)
    victim = ws[0]
    t_kill = time.perf_counter()
    t_kill_epoch = time.time()
    victim.kill9()
    snap = dict(
        conn.execute(
            "select workflow_uuid, max(function_id) from dbos.operation_outputs"
            " where workflow_uuid = any(%s) group by 1",
            (ids,),
        ).fetchall()
    )
    # Replacement worker with the same executor_id: DBOS recovers an executor's
    # PENDING workflows when a process with that executor_id launches.
    new = spawn_workers(1, first_index=0)

    def poll(progressed: dict[str, float]) -> None:
        rows = conn.execute(
            "select workflow_uuid, function_id, completed_at_epoch_ms from dbos.operation_outputs"
            " where workflow_uuid = any(%s) and completed_at_epoch_ms >= %s",
            (ids, int(t_kill_epoch * 1000) - 2000),
        ).fetchall()
        for wid, fid, cms in rows:
            if fid > snap.get(wid, -1) and cms is not None:
                lat = cms / 1000.0 - t_kill_epoch
                if wid not in progressed or lat < progressed[wid]:
                    progressed[wid] = lat

    lat_ms = r.await_recovery(n, new[0], t_kill, 0, poll)
    r.notes.append(
        f"W6: {n} workflows x endless sequence of @DBOS.step ({C.step_desc(STEP_MS)}); kill -9 of the "
        "worker process, then a new worker with the same executor_id launches and "
        "DBOS startup recovery resumes its PENDING workflows (no lease/heartbeat: recovery "
        "is by executor_id at launch, lease_s=0); progress = first new row in "
        "dbos.operation_outputs (its completed_at_epoch_ms); includes new-process start-up "
        "(extra.worker_ready_s)"
    )
    r.emit(n, max(lat_ms) / 1000.0, lat_ms)


if __name__ == "__main__":
    sys.exit(C.main("dbos", ARGS, worker_main, driver))
