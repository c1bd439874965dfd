#!/usr/bin/env python3
"""Procrastinate's runner of the LLM storm workload (bench/README.md, "Workload LLM").

A workflow of 3 sequential chat calls is a chain of jobs: each call is one job that,
once the provider answered 200, defers the next call's job (the last one records the
workflow's completion in a side table). One job attempt = one HTTP request (stdlib
urllib in a thread, the task itself async).

Retries: a custom ``RetryStrategy`` (procrastinate's documented extension point,
``get_retry_decision(exception, job)`` returning ``RetryDecision(retry_in=...)``):
20 attempts; 5xx and connection errors back off 1, 2, 4, ... s up to 8 s; a 429 is
retried in exactly its Retry-After. Every retry counts as an attempt (``job.attempts``).
Procrastinate has no rate limiter, so nothing limits the fleet's request rate but the
workers' concurrency.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ARGS = C.parse_args()
LLM = C.llm_params(ARGS) if ARGS.workload == "LLM" else {}

from procrastinate import App, PsycopgConnector, RetryDecision  # noqa: E402
from procrastinate.retry import BaseRetryStrategy  # noqa: E402

QUEUE = "storm"
CONC = int(C.param_float(ARGS, "procrastinate_concurrency", 10))
FETCH_POLL_S = C.param_float(ARGS, "procrastinate_fetch_poll_s", 0.1)


class StormRetry(BaseRetryStrategy):
    """Backoff for failures, Retry-After for throttles, at most LLM_MAX_ATTEMPTS attempts."""

    def get_retry_decision(self, *, exception: BaseException, job: Any) -> RetryDecision | None:
        if job.attempts + 1 >= C.LLM_MAX_ATTEMPTS:  # job.attempts: previous attempts
            return None
        if isinstance(exception, C.LLMThrottled) and exception.retry_after is not None:
            return RetryDecision(retry_in={"seconds": exception.retry_after})
        if isinstance(exception, (C.LLMThrottled, C.LLMFailed)):
            return RetryDecision(retry_in={"seconds": C.llm_backoff(job.attempts)})
        return None


app = App(connector=PsycopgConnector(conninfo=C.libpq_dsn(ARGS.dsn), min_size=2, max_size=CONC + 5))


@app.task(name="storm_call", queue=QUEUE, retry=StormRetry())
async def storm_call(workflow_id: str, n: int, calls: int) -> None:
    await asyncio.to_thread(C.llm_call, LLM["base_url"], workflow_id, n)
    if n < calls:
        await storm_call.defer_async(workflow_id=workflow_id, n=n + 1, calls=calls)
    else:
        await app.connector.execute_query_async(
            "INSERT INTO storm_done (workflow_id) VALUES (%(wf)s) ON CONFLICT DO NOTHING", wf=workflow_id)


async def worker_async() -> None:
    from procrastinate.worker import Worker

    async with app.open_async():
        w = Worker(app=app, queues=[QUEUE], concurrency=CONC, listen_notify=True,
                   fetch_job_polling_interval=FETCH_POLL_S, wait=True, install_signal_handlers=True,
                   name=f"w{ARGS.index}")
        run = asyncio.create_task(w.run())
        while w.worker_id is None and not run.done():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.005)
        C.touch_ready()
        await run


def worker_main() -> int:
    import logging

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(worker_async())
    return 0


def driver(r: C.Runner) -> None:
    import psycopg

    n, k, calls = ARGS.size, ARGS.workers, LLM["calls"]
    loop = asyncio.new_event_loop()
    loop.run_until_complete(app.open_async())
    try:
        loop.run_until_complete(app.schema_manager.apply_schema_async())
        conn = psycopg.connect(C.libpq_dsn(ARGS.dsn), autocommit=True)
        conn.execute("CREATE TABLE storm_done (workflow_id text PRIMARY KEY, at timestamptz NOT NULL "
                     "DEFAULT clock_timestamp())")
        script = os.path.abspath(__file__)
        ws = [r.spawn(r.self_cmd(script, "worker", i)) for i in range(k)]
        r.wait_ready(ws)
        window_start = time.time()
        t0 = time.perf_counter()
        items = [{"workflow_id": f"s{i}", "n": 1, "calls": calls} for i in range(n)]
        for i in range(0, n, 500):
            loop.run_until_complete(storm_call.batch_defer_async(*items[i:i + 500]))
        C.log(f"enqueued {n} in {time.perf_counter() - t0:.1f} s")

        def count() -> tuple[int, int]:
            return conn.execute(
                "SELECT (SELECT count(*) FROM storm_done), (SELECT count(*) FROM procrastinate_jobs "
                "WHERE status = 'failed')").fetchone()

        C.llm_wait(r, n, window_start + LLM["deadline_s"], count)
        seconds = time.perf_counter() - t0
        completed = {wid: float(at) for wid, at in conn.execute(
            "SELECT workflow_id, extract(epoch FROM at)::float8 FROM storm_done")}
        failed = count()[1]
    finally:
        loop.run_until_complete(app.close_async())
        loop.close()
    C.llm_report(
        r, LLM,
        f"procrastinate; {k} workers, concurrency {CONC} each, listen_notify, fetch_job_polling_interval="
        f"{FETCH_POLL_S:g}s; custom RetryStrategy: {C.LLM_MAX_ATTEMPTS} attempts, backoff "
        f"{C.LLM_RETRY_INITIAL_S:g} s x{C.LLM_RETRY_BACKOFF:g} up to {C.LLM_RETRY_MAX_S:g} s, 429: "
        "RetryDecision(retry_in=Retry-After); no rate limiter in procrastinate",
        window_start, seconds, completed, {"completed": len(completed), "failed": failed})


if __name__ == "__main__":
    sys.exit(C.main("procrastinate", ARGS, worker_main, driver))
