#!/usr/bin/env python3
"""Celery + Redis peer runner (see bench/README.md for the protocol).

Celery is a task queue with Redis as broker and result backend; nothing is
stored in Postgres (the --dsn database is left untouched), and Redis durability
is whatever the Redis server is configured for. So:
- an activity is one task whose result is stored in the Redis result backend;
- a workflow of sequential steps is a chain: each task sends the next task
  (apply_async) before returning, with a deterministic task id per step;
- fan-out (W4) is a chord: group of 20 leaf tasks + a join callback (the Redis
  backend's native chord counter); the workflow is done when the join stored
  its result.

Each run uses its own queue name and task-id prefix, so runs sharing one Redis
do not see each other's messages; the run's keys are deleted at the end.

Driver: sends the tasks and watches the result keys in Redis.
Workers: this same file with --role worker, one `celery worker` (app.worker_main)
per worker process, with its pool children.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

ARGS = C.parse_args()

from celery import Celery, chord, group  # noqa: E402
from celery.signals import worker_ready  # noqa: E402

REDIS = ARGS.redis or "redis://127.0.0.1:6379/0"
RUN = os.environ.get("BENCH_CELERY_RUN") or f"b{os.getpid()}x{int(time.time() * 1000) % 100000000}"
QUEUE = f"bench-{RUN}"
W6 = ARGS.workload == "W6"

POOL = ARGS.params.get("celery_pool", "prefork")
CONCURRENCY = int(C.param_float(ARGS, "celery_concurrency", os.cpu_count() or 2))
# Optimizing guide: for many short tasks a large prefetch multiplier (64/128);
# for long tasks with acks_late, 1.
PREFETCH = int(C.param_float(ARGS, "celery_prefetch", 1 if W6 else 64))
STEP_MS = C.param_float(ARGS, "step_ms", 0.0)  # W6 step sleep (0 = trivial steps, like cairn)
LEASE_S = C.param_float(ARGS, "lease_s", 3.0)  # W6 visibility timeout

app = Celery("bench", broker=REDIS, backend=REDIS)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=PREFETCH,
    task_acks_late=W6,
    task_reject_on_worker_lost=W6,
    result_expires=3600,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
    worker_enable_remote_control=False,
    task_send_sent_event=False,
    result_backend_always_retry=True,
)
if W6:
    app.conf.broker_transport_options = {
        "visibility_timeout": LEASE_S,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }


def tid(kind: str, wf: int, k: int = 0) -> str:
    return f"{RUN}-{kind}-{wf}-{k}"


# ---- tasks --------------------------------------------------------------------


@app.task(name="bench.chain")
def chain_step(wf: int, k: int, n: int, x: int, ms: float = 0.0) -> int:
    if ms:
        time.sleep(ms / 1000.0)
    y = x + 1
    if k + 1 < n:
        chain_step.apply_async((wf, k + 1, n, y, ms), task_id=tid("c", wf, k + 1))
    return y


@app.task(name="bench.leaf")
def leaf(wf: int, x: int) -> int:
    return x + 1


@app.task(name="bench.join")
def join(results: list, wf: int) -> int:
    return sum(results)


@worker_ready.connect
def _ready(**_kw) -> None:
    C.touch_ready()


# ---- worker -------------------------------------------------------------------


def worker_main() -> int:
    argv = [
        "worker",
        f"--pool={POOL}",
        f"--concurrency={CONCURRENCY}",
        f"--queues={QUEUE}",
        f"--hostname=w{ARGS.index}-{RUN}@%h",
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    app.worker_main(argv=argv)
    return 0


# ---- driver -------------------------------------------------------------------


def redis_client():
    import redis

    return redis.Redis.from_url(REDIS)


def meta_key(task_id: str) -> str:
    return f"celery-task-meta-{task_id}"


def fetch_done(rc, ids: list[str]) -> dict[str, float]:
    """task id -> date_done epoch, for those whose SUCCESS result is stored."""
    import json

    out: dict[str, float] = {}
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        for t, raw in zip(chunk, rc.mget([meta_key(x) for x in chunk]), strict=False):
            if raw is None:
                continue
            m = json.loads(raw)
            if m.get("status") == "SUCCESS":
                out[t] = datetime.fromisoformat(m["date_done"]).timestamp()
            elif m.get("status") == "FAILURE":
                raise RuntimeError(f"task {t} failed: {m.get('result')}")
    return out


def wait_ids(r: C.Runner, rc, ids: list[str], poll: float = 0.05, timeout: float = 1800) -> float:
    pending = list(ids)
    last = 0.0
    deadline = time.time() + timeout
    while pending:
        got = fetch_done(rc, pending)
        if got:
            last = max(last, max(got.values()))
            pending = [t for t in pending if t not in got]
        if not pending:
            break
        if time.time() > deadline:
            raise RuntimeError(f"timeout: {len(ids) - len(pending)}/{len(ids)} done")
        r.check_alive()
        time.sleep(poll)
    return last


def cleanup_redis(rc) -> None:
    import json

    try:
        keys = list(rc.scan_iter(match=f"*{RUN}*", count=1000))
        # Chord counters are keyed by the group id, which Celery generates itself.
        gids = set()
        leaf_keys = [k for k in keys if f"{RUN}-l-".encode() in k]
        for i in range(0, len(leaf_keys), 1000):
            for raw in rc.mget(leaf_keys[i : i + 1000]):
                if raw:
                    gid = json.loads(raw).get("group_id")
                    if gid:
                        gids.add(gid)
        for gid in gids:
            for suffix in ("", ".c", ".t", ".j"):
                keys.append(f"celery-taskset-meta-{gid}{suffix}")
        for i in range(0, len(keys), 1000):
            rc.delete(*keys[i : i + 1000])
        # acks_late messages left in kombu's (shared) unacked hash by killed workers
        for tag, raw in rc.hscan_iter("unacked"):
            if RUN.encode() in raw:
                rc.hdel("unacked", tag)
                rc.zrem("unacked_index", tag)
        rc.delete(QUEUE)
    except Exception as e:
        C.log(f"redis cleanup: {e!r}")


def driver(r: C.Runner) -> None:
    if not C.redis_ping(REDIS):
        r.notes.append(f"Redis at {REDIS} did not answer PING; skipped")
        r.emit(None, None, error=f"service unavailable: no Redis at {REDIS}")
        return
    os.environ["BENCH_CELERY_RUN"] = RUN  # workers use the same queue / id prefix
    rc = redis_client()
    try:
        _driver(r, rc)
    finally:
        r.cleanup()  # stop workers before deleting their queue
        cleanup_redis(rc)


def _driver(r: C.Runner, rc) -> None:
    import celery as celery_pkg

    a = ARGS
    script = os.path.abspath(__file__)
    wl, n, k = a.workload, a.size, a.workers
    r.notes.append(
        f"celery {celery_pkg.__version__} + redis {_redis_version(rc)}: broker and result backend "
        f"{REDIS}; NOT durable in Postgres (nothing written to the DSN's database); "
        f"{k} `celery worker` process(es), pool={POOL}, concurrency={CONCURRENCY} each, "
        f"worker_prefetch_multiplier={PREFETCH}, task_acks_late={W6}, json serializer, "
        "without gossip/mingle/heartbeat, no task events, remote control off"
    )

    def spawn_workers(count: int, first_index: int = 0):
        return [r.spawn(r.self_cmd(script, "worker", first_index + i)) for i in range(count)]

    if wl in ("W1", "W2", "W4"):
        if wl == "W4":
            ids = [tid("j", wf) for wf in range(n)]
            steps = n * C.W4_FANOUT
        else:
            per = 1 if wl == "W1" else C.W2_STEPS
            ids = [tid("c", wf, per - 1) for wf in range(n)]
            steps = n * per

        def enqueue() -> None:
            if wl == "W4":
                for wf in range(n):
                    header = group(
                        leaf.s(wf, i).set(task_id=tid("l", wf, i)) for i in range(C.W4_FANOUT)
                    )
                    chord(header, join.s(wf).set(task_id=tid("j", wf))).apply_async()
                return
            with app.producer_or_acquire() as prod:
                for wf in range(n):
                    chain_step.apply_async(
                        (wf, 0, per, wf), task_id=tid("c", wf, 0), producer=prod
                    )

        seconds = r.drain(enqueue, lambda: spawn_workers(k), lambda: wait_ids(r, rc, ids))
        if wl == "W2":
            r.notes.append(
                "no workflow concept: a workflow is a chain of 10 tasks, each sending the next "
                "(apply_async) before returning"
            )
        if wl == "W4":
            r.notes.append(
                "fan-out = chord(group of 20 leaf tasks, join callback) on the Redis backend; "
                "done = join result stored; the join task is not counted as a step"
            )
        r.emit(steps, seconds)
        return

    if wl == "W3":
        ws = spawn_workers(1)
        r.wait_ready(ws)

        def one(i: int) -> None:
            res = chain_step.apply_async((i, 0, 1, i), task_id=tid("c", i, 0)).get(timeout=60)
            assert res == i + 1, res

        seconds, lat = r.latency_loop(n, one)
        r.notes.append("start = apply_async, result = AsyncResult.get() (Redis pub/sub)")
        r.emit(n, seconds, lat)
        return

    if wl == "W5":
        ws = spawn_workers(1)
        r.wait_ready(ws)

        def one(wf: int, steps: int) -> float:
            t_epoch = time.time()
            chain_step.apply_async((wf, 0, steps, 0), task_id=tid("c", wf, 0))
            last = wait_ids(r, rc, [tid("c", wf, steps - 1)], poll=0.02)
            return last - t_epoch

        C.warmup_w5(ARGS, one)
        short = one(1, C.W5_SHORT)
        long_ = one(2, n)
        r.extra.update({"short_steps": C.W5_SHORT, "short_seconds": round(short, 4)})
        r.notes.append(
            "no workflow concept: the workflow is a chain of N tasks, each sending the next; "
            "seconds = first send to the last task's date_done in the result backend"
        )
        r.emit(n, long_)
        return

    if wl == "W6":
        w6(r, rc, spawn_workers, n)
        return

    raise SystemExit(f"unknown workload {wl}")


def w6(r: C.Runner, rc, spawn_workers, n: int) -> None:
    ws = spawn_workers(1)
    r.wait_ready(ws)
    with app.producer_or_acquire() as prod:
        for wf in range(n):
            chain_step.apply_async(
                (wf, 0, 1_000_000, 0, STEP_MS), task_id=tid("c", wf, 0), producer=prod
            )
    cur = dict.fromkeys(range(n), -1)  # highest step with a stored result

    def advance() -> None:
        while True:
            ids = [tid("c", wf, cur[wf] + 1) for wf in range(n)]
            got = fetch_done(rc, ids)
            if not got:
                return
            for wf in range(n):
                if tid("c", wf, cur[wf] + 1) in got:
                    cur[wf] += 1

    deadline = time.time() + 120
    while True:
        advance()
        if min(cur.values()) >= 1:
            break
        if time.time() > deadline:
            raise RuntimeError(f"only {sum(v >= 1 for v in cur.values())}/{n} chains running")
        r.check_alive()
        time.sleep(0.05)
    time.sleep(0.5)
    t_kill = time.perf_counter()
    t_kill_epoch = time.time()
    ws[0].kill9()
    advance()
    snap = dict(cur)
    unacked = rc.hlen("unacked")
    new = spawn_workers(1, first_index=1)

    def poll(progressed: dict[int, float]) -> None:
        todo = [wf for wf in range(n) if wf not in progressed]
        got = fetch_done(rc, [tid("c", wf, snap[wf] + 1) for wf in todo])
        for wf in todo:
            t = got.get(tid("c", wf, snap[wf] + 1))
            if t is not None:
                progressed[wf] = t - t_kill_epoch

    lat_ms = r.await_recovery(n, new[0], t_kill, LEASE_S, poll)
    r.extra["unacked_at_kill"] = unacked
    r.notes.append(
        f"W6: no workflow concept: {n} chains of tasks (each {C.step_desc(STEP_MS)} then sends the "
        "next); task_acks_late=True + task_reject_on_worker_lost=True so a killed worker's "
        f"messages are not lost: Redis visibility_timeout={LEASE_S}s, "
        "unacked_restore_interval=1, unacked_restore_throttle=1 (kombu); kill -9 of the worker's "
        "main process and its pool children, new worker started right after; progress = "
        "result stored for the next step of that chain (its date_done). Without acks_late "
        "(Celery's default) the in-flight tasks would be lost and those chains never progress"
    )
    r.emit(n, max(lat_ms) / 1000.0, lat_ms)


def _redis_version(rc) -> str:
    try:
        return rc.info("server").get("redis_version", "?")
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(C.main("celery", ARGS, worker_main, driver))
