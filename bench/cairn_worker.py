"""A cairn worker process for the benchmark: ``cairn worker -m cairn_flows`` with the knobs
the CLI does not expose (cache size). Runs on uvloop like the CLI; SIGTERM drains and exits.

    python bench/cairn_worker.py --dsn DSN [--workflow-concurrency N] [--cache-size N]
                                 [--lease-seconds S] [--identity NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cairn_flows

from cairn import Worker
from cairn.worker import collect


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--workflow-concurrency", type=int, default=4)
    p.add_argument("--activity-concurrency", type=int, default=100)
    p.add_argument("--cache-size", type=int, default=1000)
    p.add_argument("--lease-seconds", type=float, default=30.0)
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--identity", default=None)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workflows, activities = collect(cairn_flows)

    async def go() -> None:
        worker = Worker(a.dsn, workflows=workflows, activities=activities,
                        workflow_concurrency=a.workflow_concurrency, activity_concurrency=a.activity_concurrency,
                        cache_size=a.cache_size, lease_seconds=a.lease_seconds, poll_interval=a.poll_interval,
                        identity=a.identity, module="cairn_flows")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        runner = asyncio.create_task(worker.run())
        started = asyncio.create_task(worker.started())
        await asyncio.wait({runner, started}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            runner.result()
        print(f"worker {worker.identity} running", file=sys.stderr, flush=True)
        await runner
        print(f"worker {worker.identity} stats {worker.stats}", file=sys.stderr, flush=True)

    profile_dir = os.environ.get("CAIRN_BENCH_PROFILE")  # diagnostics: cProfile the worker
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        import uvloop

        uvloop.run(go())
    except ImportError:
        asyncio.run(go())
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.prof"))


if __name__ == "__main__":
    main()
