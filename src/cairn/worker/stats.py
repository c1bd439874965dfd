"""The worker's counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkerStats:
    """Counters, for tests and progress output."""

    workflow_tasks: int = 0
    workflow_task_failures: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    activities_completed: int = 0
    activities_failed: int = 0
    activities_retried: int = 0
    activities_rescheduled: int = 0  # activity.Reschedule: put back without burning an attempt
    timers_fired: int = 0
    rescued: int = 0
    fast_path: int = 0  # activity outcomes whose workflow task ran in the same transaction
    speculated: int = 0  # workflow tasks of the fast path run ahead from the cache (one round trip)
    speculation_missed: int = 0  # fast-path groups whose runs were not as cached (took the locked way)
    queries_from_cache: int = 0  # queries answered by a live cached instance
    queries_replayed: int = 0  # queries answered by replaying the history into a throwaway instance
