"""The worker process: claims workflow tasks and activity attempts from Postgres.

The face of the worker package: :class:`Worker` (in :mod:`cairn.worker.worker`), its
counters, and the settings that tools and tests read.
"""

from __future__ import annotations

from cairn.worker.activities import LEASE_SECONDS
from cairn.worker.maintenance import QUEUE_DEPTH_CAP
from cairn.worker.stats import WorkerStats
from cairn.worker.tasks import CLAIM_BATCH, TASK_RETRY_MAX_SECONDS
from cairn.worker.worker import (
    ACTIVITY_POOL_MAX,
    DRAIN_GRACE_SECONDS,
    ENGINE_POOL_EXTRA,
    IDLE_TX_TIMEOUT_MS,
    POLL_INTERVAL_SECONDS,
    WORKER_CONNECTION_OPTIONS,
    Worker,
    collect,
)

__all__ = [
    "ACTIVITY_POOL_MAX",
    "CLAIM_BATCH",
    "DRAIN_GRACE_SECONDS",
    "ENGINE_POOL_EXTRA",
    "IDLE_TX_TIMEOUT_MS",
    "LEASE_SECONDS",
    "POLL_INTERVAL_SECONDS",
    "QUEUE_DEPTH_CAP",
    "TASK_RETRY_MAX_SECONDS",
    "WORKER_CONNECTION_OPTIONS",
    "Worker",
    "WorkerStats",
    "collect",
]
