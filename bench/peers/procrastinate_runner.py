#!/usr/bin/env python3
"""Procrastinate peer runner (see bench/README.md for the protocol).

Procrastinate is a Postgres task queue, not a workflow engine, so:
- an activity is one job (a row in procrastinate_jobs reaching status
  'succeeded', with a 'succeeded' row in procrastinate_events);
- a workflow of sequential steps is a chain: each job defers the next one
  before returning (the defer and the job's completion are separate
  transactions, so a crash between them can run a step twice);
- fan-out (W4) is a parent job that batch-defers 20 leaf jobs; each leaf
  increments a completion counter in a side table, and the one that brings it to
  20 defers a join job; the workflow is done when its join job succeeded.

Driver: applies the schema (what `procrastinate schema --apply` does, through
SchemaManager.apply_schema_async), defers jobs, and watches the tables.
Workers: this same file with --role worker, one procrastinate Worker per
process (PsycopgConnector, async tasks, concurrency=N, listen_notify=True).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ARGS = C.parse_args()

from procrastinate import App, PsycopgConnector  # noqa: E402

QUEUE = "bench"
CONC = int(C.param_float(ARGS, "procrastinate_concurrency", 50))
RESULT_POLL_S = C.param_float(ARGS, "result_poll_s", 0.005)
STEP_MS = C.param_float(ARGS, "step_ms", 0.0)  # W6 step sleep (0 = trivial steps, like cairn)
LEASE_S = C.param_float(ARGS, "lease_s", 3.0)  # W6 stalled-worker threshold
HEARTBEAT_S = C.param_float(ARGS, "heartbeat_s", 1.0)
STALL_CHECK_S = C.param_float(ARGS, "stall_check_s", 0.5)
# Fallback poll when no NOTIFY arrives (default 5 s). Lowered because a job deferred
# by a running job on the same worker can lose its wake-up (the event is cleared by
# a concurrent empty fetch), and then waits the whole interval.
FETCH_POLL_S = C.param_float(ARGS, "procrastinate_fetch_poll_s", 0.01)


def worker_concurrency() -> int:
    return max(CONC, ARGS.size + 5) if ARGS.workload == "W6" else CONC


def make_app(pool_max: int) -> App:
    return App(
        connector=PsycopgConnector(
            conninfo=C.libpq_dsn(ARGS.dsn), min_size=2, max_size=pool_max
        )
    )


app = make_app(worker_concurrency() + 5 if ARGS.role == "worker" else 10)


# ---- tasks ------------------------------------------------------------------


@app.task(name="chain", queue=QUEUE)
async def chain(wf: int, k: int, n: int, x: int, ms: float = 0.0) -> int:
    if ms:
        await asyncio.sleep(ms / 1000.0)
    y = x + 1
    if k + 1 < n:
        await chain.defer_async(wf=wf, k=k + 1, n=n, x=y, ms=ms)
    return y


@app.task(name="fan", queue=QUEUE)
async def fan(wf: int, n: int) -> None:
    await leaf.batch_defer_async(*[{"wf": wf, "x": i} for i in range(n)])


@app.task(name="leaf", queue=QUEUE)
async def leaf(wf: int, x: int) -> int:
    row = await app.connector.execute_query_one_async(
        "UPDATE bench_fan SET done = done + 1 WHERE wf = %(wf)s RETURNING done, total",
        wf=wf,
    )
    if row["done"] == row["total"]:
        await join.defer_async(wf=wf)
    return x + 1


@app.task(name="join", queue=QUEUE)
async def join(wf: int) -> int:
    return wf


# ---- worker -------------------------------------------------------------------


async def stalled_retrier() -> None:
    """Procrastinate's documented recipe for stalled jobs (get_stalled_jobs +
    retry_job, usually a periodic task), run every STALL_CHECK_S seconds."""
    while True:
        try:
            for job in await app.job_manager.get_stalled_jobs(
                seconds_since_heartbeat=LEASE_S
            ):
                await app.job_manager.retry_job(job)
        except Exception as e:
            C.log(f"stalled retrier: {e!r}")
        await asyncio.sleep(STALL_CHECK_S)


async def worker_async() -> None:
    from procrastinate.worker import Worker

    async with app.open_async():
        opts = {
            "queues": [QUEUE],
            "concurrency": worker_concurrency(),
            "listen_notify": True,
            "fetch_job_polling_interval": FETCH_POLL_S,
            "wait": True,
            "install_signal_handlers": True,
            "name": f"w{ARGS.index}",
        }
        if ARGS.workload == "W6":
            opts.update(
                update_heartbeat_interval=HEARTBEAT_S, stalled_worker_timeout=LEASE_S
            )
        w = Worker(app=app, **opts)
        run = asyncio.create_task(w.run())
        retrier = asyncio.create_task(stalled_retrier()) if ARGS.workload == "W6" else None
        while w.worker_id is None and not run.done():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # LISTEN set up by the side tasks
        C.touch_ready()
        try:
            await run
        finally:
            if retrier:
                retrier.cancel()


def worker_main() -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(worker_async())
    return 0


# ---- driver -------------------------------------------------------------------


def connect():
    import psycopg

    return psycopg.connect(C.libpq_dsn(ARGS.dsn), autocommit=True)


def wait_jobs(r: C.Runner, conn, task: str, expected: int, poll: float = 0.05, timeout: float = 1800) -> float:
    """Wait until `expected` jobs of `task` succeeded; return epoch of the last success."""
    deadline = time.time() + timeout
    while True:
        done, failed = conn.execute(
            "select count(*) filter (where status = 'succeeded'),"
            " count(*) filter (where status = 'failed')"
            " from procrastinate_jobs where task_name = %s",
            (task,),
        ).fetchone()
        if failed:
            raise RuntimeError(f"{failed} {task} jobs failed")
        if done >= expected:
            break
        if time.time() > deadline:
            raise RuntimeError(f"timeout: {done}/{expected} {task} jobs")
        r.check_alive()
        time.sleep(poll)
    return float(
        conn.execute(
            "select extract(epoch from max(e.at)) from procrastinate_events e"
            " join procrastinate_jobs j on j.id = e.job_id"
            " where e.type = 'succeeded' and j.task_name = %s",
            (task,),
        ).fetchone()[0]
    )


async def defer_batches(task, items: list[dict], batch: int = 1000) -> None:
    for i in range(0, len(items), batch):
        await task.batch_defer_async(*items[i : i + batch])


def driver(r: C.Runner) -> None:
    a = ARGS
    script = os.path.abspath(__file__)
    wl, n, k = a.workload, a.size, a.workers
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    run(app.open_async())
    try:
        run(app.schema_manager.apply_schema_async())
        conn = connect()
        _driver(r, script, wl, n, k, run, conn)
    finally:
        run(app.close_async())
        loop.close()


def _driver(r: C.Runner, script: str, wl: str, n: int, k: int, run, conn) -> None:
    conc = worker_concurrency()
    r.notes.append(
        f"procrastinate {C.package_version('procrastinate')}; "
        f"PsycopgConnector (pool max {conc + 5}); schema applied with SchemaManager.apply_schema "
        f"(= procrastinate schema --apply); {k} worker process(es), each one Worker with async "
        f"tasks, concurrency={conc}, listen_notify=True, fetch_job_polling_interval={FETCH_POLL_S}s "
        f"(default 5s; lowered because a job deferred from a running job often loses its "
        f"NOTIFY wake-up and then waits a whole interval), delete_jobs=never (finished jobs stay as the durable record)"
    )

    def spawn_workers(count: int, first_index: int = 0):
        return [r.spawn(r.self_cmd(script, "worker", first_index + i)) for i in range(count)]

    if wl in ("W1", "W2", "W4"):
        if wl == "W4":
            steps, task, expected = n * C.W4_FANOUT, "join", n
        else:
            per = 1 if wl == "W1" else C.W2_STEPS
            steps, task, expected = n * per, "chain", n * per

        def enqueue() -> None:
            if wl == "W4":
                conn.execute(
                    "create table bench_fan (wf int primary key, done int not null default 0,"
                    " total int not null)"
                )
                with conn.cursor() as cur:
                    cur.executemany(
                        "insert into bench_fan (wf, total) values (%s, %s)",
                        [(i, C.W4_FANOUT) for i in range(n)],
                    )
                run(defer_batches(fan, [{"wf": i, "n": C.W4_FANOUT} for i in range(n)]))
            else:
                run(defer_batches(chain, [{"wf": i, "k": 0, "n": per, "x": i} for i in range(n)]))

        seconds = r.drain(enqueue, lambda: spawn_workers(k), lambda: wait_jobs(r, conn, task, expected))
        leaf_task = "leaf" if wl == "W4" else "chain"
        got = conn.execute(
            "select count(*) from procrastinate_jobs where task_name = %s and status = 'succeeded'",
            (leaf_task,),
        ).fetchone()[0]
        r.extra["recorded_steps"] = got
        r.extra["jobs_per_worker_id"] = {
            str(w): c
            for w, c in conn.execute(
                "select worker_id, count(*) from procrastinate_jobs group by 1 order by 1"
            ).fetchall()
        }
        if got != steps:
            r.notes.append(f"WARNING succeeded activity jobs {got} != {steps}")
        if wl == "W2":
            r.notes.append(
                "no workflow concept: a workflow is a chain of 10 jobs, each deferring the next"
            )
        if wl == "W4":
            r.notes.append(
                "no workflow concept: fan-out = a parent job batch-deferring 20 leaf jobs; each "
                "leaf bumps a counter row (bench_fan) and the 20th defers a join job; done = join "
                "succeeded; parent/join jobs are not counted as steps"
            )
        r.emit(steps, seconds)
        return

    if wl == "W3":
        ws = spawn_workers(1)
        r.wait_ready(ws)

        def one(i: int) -> None:
            job_id = run(chain.defer_async(wf=i, k=0, n=1, x=i))
            while True:
                st = conn.execute(
                    "select status from procrastinate_jobs where id = %s", (job_id,)
                ).fetchone()[0]
                if st == "succeeded":
                    return
                if st == "failed":
                    raise RuntimeError("job failed")
                time.sleep(RESULT_POLL_S)

        seconds, lat = r.latency_loop(n, one, lambda: conn.execute(C.NEXT_XID_SQL).fetchone()[0])
        r.notes.append(
            "start = defer_async (the insert NOTIFYs the listening worker); Procrastinate has "
            f"no result API, so the driver polls the job's status every {RESULT_POLL_S}s"
        )
        r.emit(n, seconds, lat)
        return

    if wl == "W5":
        ws = spawn_workers(1)
        r.wait_ready(ws)

        def one(wf: int, steps: int) -> float:
            t_epoch = time.time()
            run(chain.defer_async(wf=wf, k=0, n=steps, x=0))
            while True:
                row = conn.execute(
                    "select extract(epoch from e.at) from procrastinate_jobs j"
                    " join procrastinate_events e on e.job_id = j.id and e.type = 'succeeded'"
                    " where j.task_name = 'chain' and (j.args->>'wf')::int = %s"
                    " and (j.args->>'k')::int = %s",
                    (wf, steps - 1),
                ).fetchone()
                if row:
                    return float(row[0]) - t_epoch
                r.check_alive()
                time.sleep(0.02)

        C.warmup_w5(ARGS, one)
        short = one(1, C.W5_SHORT)
        long_ = one(2, n)
        r.extra.update({"short_steps": C.W5_SHORT, "short_seconds": round(short, 4)})
        r.notes.append(
            "no workflow concept: the workflow is a chain of N jobs, each deferring the next; "
            "seconds = first defer to the last job's 'succeeded' event (procrastinate_events.at)"
        )
        r.emit(n, long_)
        return

    if wl == "W6":
        w6(r, run, conn, spawn_workers, n)
        return

    raise SystemExit(f"unknown workload {wl}")


def w6(r: C.Runner, run, conn, spawn_workers, n: int) -> None:
    ws = spawn_workers(1)
    r.wait_ready(ws)
    run(
        defer_batches(
            chain, [{"wf": i, "k": 0, "n": 1_000_000, "x": 0, "ms": STEP_MS} for i in range(n)]
        )
    )
    progress_sql = (
        "select (j.args->>'wf')::int, max((j.args->>'k')::int) from procrastinate_jobs j"
        " where j.task_name = 'chain' and j.status = 'succeeded' group by 1"
    )
    deadline = time.time() + 120
    while True:
        prog = dict(conn.execute(progress_sql).fetchall())
        if len(prog) >= n and min(prog.values()) >= 1:
            break
        if time.time() > deadline:
            raise RuntimeError(f"only {len(prog)}/{n} chains running")
        r.check_alive()
        time.sleep(0.05)
    time.sleep(0.5)
    t_kill = time.perf_counter()
    t_kill_epoch = time.time()
    ws[0].kill9()
    snap = dict(conn.execute(progress_sql).fetchall())
    doing = conn.execute(
        "select count(*) from procrastinate_jobs where status = 'doing'"
    ).fetchone()[0]
    new = spawn_workers(1, first_index=1)

    def poll(progressed: dict[int, float]) -> None:
        rows = conn.execute(
            "select (j.args->>'wf')::int, (j.args->>'k')::int, extract(epoch from e.at)"
            " from procrastinate_events e join procrastinate_jobs j on j.id = e.job_id"
            " where e.type = 'succeeded' and j.task_name = 'chain' and e.at >= to_timestamp(%s)",
            (t_kill_epoch - 2.0,),
        ).fetchall()
        for wf, kk, at in rows:
            if kk > snap.get(wf, -1):
                lat = float(at) - t_kill_epoch
                if wf not in progressed or lat < progressed[wf]:
                    progressed[wf] = lat

    lat_ms = r.await_recovery(n, new[0], t_kill, LEASE_S, poll)
    r.extra["jobs_doing_at_kill"] = doing
    r.notes.append(
        f"W6: no workflow concept: {n} chains of jobs (each async job {C.step_desc(STEP_MS)} then "
        "defers the next); kill -9 of the worker process, new worker started right "
        f"after; in-flight jobs stay 'doing' until the dead worker's heartbeat "
        f"(update_heartbeat_interval={HEARTBEAT_S}s) is older than {LEASE_S}s, then "
        "the new worker's stalled-job retrier (get_stalled_jobs(seconds_since_heartbeat="
        f"{LEASE_S}) + retry_job every {STALL_CHECK_S}s, the documented recipe) requeues them; "
        "progress = first 'succeeded' event of a later step of that chain"
    )
    r.emit(n, max(lat_ms) / 1000.0, lat_ms)


if __name__ == "__main__":
    sys.exit(C.main("procrastinate", ARGS, worker_main, driver))
