"""What the DBOS runners share (dbos_runner.py, dbos_llm.py): the configuration and the
worker process. Imported only from bench/.venv-dbos."""

from __future__ import annotations

import argparse
import os
import signal
import threading

import _common as C
from dbos import DBOS


def config(args: argparse.Namespace, name: str, version: str, executor_id: str, pool: int = 20,
           log_level: str = "WARNING") -> dict:
    """DBOS's config for one process of a run: the run's database as the system database,
    a fixed application version (so the driver, the workers and W6's replacement agree)."""
    return {
        "name": name,
        "system_database_url": C.libpq_dsn(args.dsn),
        "application_version": version,
        "executor_id": executor_id,
        "log_level": os.environ.get("BENCH_DBOS_LOG", log_level),
        "sys_db_pool_size": pool,
    }


def worker_main(cfg: dict) -> int:
    """One worker process: launch DBOS (it dequeues from the registered queues), say it is
    ready, and run until SIGTERM."""
    DBOS(config=cfg)
    DBOS.launch()
    C.touch_ready()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    os._exit(0)  # no graceful drain needed: the benchmark is over
