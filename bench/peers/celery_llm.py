#!/usr/bin/env python3
"""Celery + Redis runner of the LLM storm workload (bench/README.md, "Workload LLM").

A workflow of 3 sequential chat calls is a chain: each call is one task that, once the
provider answered 200, sends the next call's task (the last one writes the workflow's
completion time into a Redis hash). One task attempt = one HTTP request.

Retries, as Celery documents them: ``autoretry_for=(LLMFailed,)`` (5xx, connection
errors) with ``retry_backoff=1`` (1, 2, 4, ... s), ``retry_backoff_max=8``,
``retry_jitter`` (Celery's default: a random delay up to the backoff),
``max_retries=19`` (20 attempts); ``acks_late=True``. Retry-After: a 429 does
``raise self.retry(countdown=Retry-After)``, which honours it exactly but counts against
``max_retries`` like any retry.

Client-side limit: none by default. Celery's task ``rate_limit`` (per worker process) is
available with ``--param celery_rate_limit=1`` (``rpm / workers`` per minute per worker),
but it is not Celery's best here: in the first full run (20261206T133048Z) it let each
worker run about one task per second (the consumer re-checks its token bucket on the
event loop's timer), 0 of 1,000 workflows done in 300 s.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ARGS = C.parse_args()
LLM = C.llm_params(ARGS) if ARGS.workload == "LLM" else {}

from celery import Celery  # noqa: E402
from celery.signals import worker_ready  # noqa: E402

REDIS = ARGS.redis or "redis://127.0.0.1:6379/9"
RUN = os.environ.get("BENCH_CELERY_RUN") or f"s{os.getpid()}x{int(time.time() * 1000) % 100000000}"
QUEUE = f"storm-{RUN}"
DONE_KEY = f"storm-done-{RUN}"
FAILED_KEY = f"storm-failed-{RUN}"
CONCURRENCY = int(C.param_float(ARGS, "celery_concurrency", 4))
RATE_LIMITED = ARGS.params.get("celery_rate_limit", "0") not in ("0", "", "false")
RATE = f"{max(int(LLM.get('rpm', 60)) // max(ARGS.workers, 1), 1)}/m" if RATE_LIMITED else None

app = Celery("storm", broker=REDIS)
app.conf.update(task_serializer="json", accept_content=["json"], task_default_queue=QUEUE,
                task_ignore_result=True, worker_hijack_root_logger=False, worker_redirect_stdouts=False,
                broker_connection_retry_on_startup=True, worker_send_task_events=False,
                worker_enable_remote_control=False, task_send_sent_event=False)

_redis = None


def rc():  # type: ignore[no-untyped-def]
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(REDIS)
    return _redis


@app.task(name="storm.call", bind=True, acks_late=True, autoretry_for=(C.LLMFailed,), retry_backoff=1,
          retry_backoff_max=int(C.LLM_RETRY_MAX_S), max_retries=C.LLM_MAX_ATTEMPTS - 1, rate_limit=RATE)
def call(self, workflow_id: str, n: int, calls: int) -> None:  # type: ignore[no-untyped-def]
    try:
        C.llm_call(LLM["base_url"], workflow_id, n)
    except C.LLMThrottled as e:
        if self.request.retries >= C.LLM_MAX_ATTEMPTS - 1:
            rc().hset(FAILED_KEY, workflow_id, time.time())
        countdown = e.retry_after if e.retry_after is not None else C.llm_backoff(self.request.retries)
        raise self.retry(countdown=countdown, exc=e) from None
    except C.LLMFailed:
        if self.request.retries >= C.LLM_MAX_ATTEMPTS - 1:
            rc().hset(FAILED_KEY, workflow_id, time.time())
        raise
    if n < calls:
        call.apply_async((workflow_id, n + 1, calls))
    else:
        rc().hset(DONE_KEY, workflow_id, time.time())


@worker_ready.connect
def _ready(**_kw) -> None:  # type: ignore[no-untyped-def]
    C.touch_ready()


def worker_main() -> int:
    app.worker_main(argv=["worker", "--pool=prefork", f"--concurrency={CONCURRENCY}", f"--queues={QUEUE}",
                          f"--hostname=w{ARGS.index}-{RUN}@%h", "--loglevel=ERROR", "--without-gossip",
                          "--without-mingle", "--without-heartbeat"])
    return 0


def driver(r: C.Runner) -> None:
    if not C.redis_ping(REDIS):
        r.emit(None, None, error=f"service unavailable: no Redis at {REDIS}")
        return
    os.environ["BENCH_CELERY_RUN"] = RUN
    n, k, calls = ARGS.size, ARGS.workers, LLM["calls"]
    script = os.path.abspath(__file__)
    ws = [r.spawn(r.self_cmd(script, "worker", i)) for i in range(k)]
    r.wait_ready(ws)
    window_start = time.time()
    t0 = time.perf_counter()
    try:
        for i in range(n):
            call.apply_async((f"s{i}", 1, calls))
        C.log(f"enqueued {n} in {time.perf_counter() - t0:.1f} s")
        C.llm_wait(r, n, window_start + LLM["deadline_s"], lambda: (rc().hlen(DONE_KEY), rc().hlen(FAILED_KEY)))
        seconds = time.perf_counter() - t0
        completed = {k.decode(): float(v) for k, v in rc().hgetall(DONE_KEY).items()}
        failed = rc().hlen(FAILED_KEY)
    finally:
        rc().delete(DONE_KEY, FAILED_KEY, QUEUE)
    C.llm_report(
        r, LLM,
        f"celery; {k} workers, prefork concurrency {CONCURRENCY}, task acks_late=True, autoretry_for=(5xx,), "
        f"retry_backoff=1, retry_backoff_max={C.LLM_RETRY_MAX_S:g}, retry_jitter (default), max_retries="
        f"{C.LLM_MAX_ATTEMPTS - 1}, " + (f"rate_limit={RATE} per worker" if RATE else "no rate_limit") +
        "; Retry-After: self.retry(countdown=Retry-After)",
        window_start, seconds, completed, {"completed": len(completed), "failed": failed})


if __name__ == "__main__":
    sys.exit(C.main("celery", ARGS, worker_main, driver))
