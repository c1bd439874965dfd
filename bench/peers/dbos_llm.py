#!/usr/bin/env python3
"""DBOS Transact's runner of the LLM storm workload (bench/README.md, "Workload LLM").

N workflows of 3 sequential chat calls, each call one ``@DBOS.step`` with DBOS's step
retries (``retries_allowed=True, interval_seconds=0.5, backoff_rate=2, max_attempts=20``):
one attempt = one HTTP request. Retry-After: DBOS's step retry takes no per-error delay
(the interval is fixed by the decorator; ``should_retry`` only says yes or no), so on a
429 the step sleeps Retry-After *inside the failed attempt* before raising; DBOS then adds
its own interval. That attempt counts against ``max_attempts``.

Client-side limit: DBOS's documented tool for rate-limited APIs, the queue ``limiter``,
limits workflow *starts*: ``{"limit": rpm / 3, "period": 60}`` (3 calls per workflow), so
first attempts stay within the provider's RPM; retries are not limited.

Driver: launches DBOS (no dequeuing), registers the queue, spawns the workers (this file
with --role worker), enqueues, waits for the workflows or the deadline.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ARGS = C.parse_args()
LLM = C.llm_params(ARGS) if ARGS.workload == "LLM" else {}

import _dbos as D  # noqa: E402
from dbos import DBOS  # noqa: E402

QUEUE = "storm"
APP_NAME = "bench-storm"
APP_VERSION = "storm-1"
WORKER_CONC = int(C.param_float(ARGS, "dbos_worker_concurrency", 20))
POLL_S = C.param_float(ARGS, "dbos_poll_s", 0.05)


def config(executor_id: str) -> dict:
    return D.config(ARGS, APP_NAME, APP_VERSION, executor_id, log_level="ERROR")


@DBOS.step(retries_allowed=True, interval_seconds=C.LLM_RETRY_INITIAL_S, backoff_rate=C.LLM_RETRY_BACKOFF,
           max_attempts=C.LLM_MAX_ATTEMPTS)
def chat_step(workflow_id: str, n: int) -> str:
    try:
        return C.llm_call(LLM["base_url"], workflow_id, n)
    except C.LLMThrottled as e:
        # Honour Retry-After the only way a step can: wait it out before failing the attempt.
        if e.retry_after:
            time.sleep(e.retry_after)
        raise


@DBOS.workflow()
def storm(workflow_id: str, calls: int) -> int:
    for n in range(1, calls + 1):
        chat_step(workflow_id, n)
    return calls


def worker_main() -> int:
    return D.worker_main(config(f"w{ARGS.index}"))


def driver(r: C.Runner) -> None:
    import psycopg

    n, k, calls, rpm = ARGS.size, ARGS.workers, LLM["calls"], LLM["rpm"]
    DBOS(config=config("driver"))
    DBOS.listen_queues([])
    DBOS.launch()
    limit = max(rpm // calls, 1)
    queue = DBOS.register_queue(QUEUE, worker_concurrency=WORKER_CONC, polling_interval_sec=POLL_S,
                                limiter={"limit": limit, "period": 60.0}, on_conflict="always_update")
    script = os.path.abspath(__file__)
    ws = [r.spawn(r.self_cmd(script, "worker", i)) for i in range(k)]
    r.wait_ready(ws)
    window_start = time.time()
    t0 = time.perf_counter()

    def enqueue(i: int) -> None:
        from dbos import SetWorkflowID

        with SetWorkflowID(f"s{i}"):
            queue.enqueue(storm, f"s{i}", calls)

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(enqueue, range(n)))
    C.log(f"enqueued {n} in {time.perf_counter() - t0:.1f} s")
    conn = psycopg.connect(C.libpq_dsn(ARGS.dsn), autocommit=True)
    sql = ("select workflow_uuid, status, coalesce(completed_at, updated_at) from dbos.workflow_status "
           "where queue_name = %s")
    rows: list = []

    def count() -> tuple[int, int]:
        rows[:] = conn.execute(sql, (QUEUE,)).fetchall()
        done = sum(1 for _, st, _ in rows if st == "SUCCESS")
        return done, sum(1 for _, st, _ in rows if st in ("ERROR", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"))

    C.llm_wait(r, n, window_start + LLM["deadline_s"], count)
    seconds = time.perf_counter() - t0
    completed = {wid: at / 1000.0 for wid, st, at in rows if st == "SUCCESS"}
    statuses: dict[str, int] = {}
    for _, st, _ in rows:
        statuses[st] = statuses.get(st, 0) + 1
    C.llm_report(
        r, LLM,
        f"dbos; {k} worker processes, queue worker_concurrency={WORKER_CONC}, limiter {limit} workflow starts "
        f"per 60 s (rpm / {calls} calls); each call a @DBOS.step(retries_allowed=True, interval_seconds="
        f"{C.LLM_RETRY_INITIAL_S:g}, backoff_rate={C.LLM_RETRY_BACKOFF:g}, max_attempts={C.LLM_MAX_ATTEMPTS}); "
        "Retry-After: the step sleeps it before raising (then DBOS's own interval)",
        window_start, seconds, completed, statuses)


if __name__ == "__main__":
    sys.exit(C.main("dbos", ARGS, worker_main, driver))
