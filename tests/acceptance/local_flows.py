"""Local activities for the worker-process tests (``cairn worker -m local_flows``).

Each attempt is recorded in ``public.attempts`` (with the worker's pid) and its effect in
``public.effects`` keyed by the idempotency key (see ``flows.py``; the ``side_tables``
fixture creates both).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psycopg

from cairn import activity, workflow


def _url() -> str:
    return os.environ["FLOWS_DB_URL"]


@activity.defn
def local_step(index: int, hold_step: int, hold: float) -> str:
    """Records the attempt and applies its effect; the first time ever (any worker) that
    step ``hold_step`` runs, it then blocks ``hold`` seconds, so that the test can kill its
    worker, its connection or the database meanwhile."""
    info = activity.info()
    label = f"step-{index}"
    with psycopg.connect(_url(), autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM public.attempts WHERE key = %s",
                              (info.idempotency_key,)).fetchone()
        conn.execute("INSERT INTO public.attempts (key, workflow_id, label, attempt, pid) VALUES (%s, %s, %s, %s, %s)",
                     (info.idempotency_key, info.workflow_id, label, info.attempt, os.getpid()))
        conn.execute("INSERT INTO public.effects (key, workflow_id, label, attempt) VALUES (%s, %s, %s, %s) "
                     "ON CONFLICT (key) DO NOTHING", (info.idempotency_key, info.workflow_id, label, info.attempt))
    if index == hold_step and before is not None and before[0] == 0:
        time.sleep(hold)
    return label


@dataclass
class LocalSteps:
    hold_step: int
    hold: float


@workflow.defn
async def local_steps(spec: LocalSteps) -> list[str]:
    """Four local activities, a short timer after each (so each marker commits with its task)."""
    out = []
    for i in range(1, 5):
        out.append(await workflow.execute_local_activity(local_step, i, spec.hold_step, spec.hold,
                                                         start_to_close_timeout=20))
        await workflow.sleep(0.05)  # a new workflow task: the marker so far is committed
    return out
