"""Asynchronous activity completion in worker subprocesses (``cairn worker -m async_flows``):
the activity hands its task token to "an outside system" (``public.async_tokens``, with the
pid of the worker that ran it) and returns without a result."""

from __future__ import annotations

import os
from typing import Any

import psycopg

from cairn import activity, workflow


@activity.defn
async def charge_card(order: str) -> Any:
    info = activity.info()
    with psycopg.connect(os.environ["FLOWS_DB_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO public.async_tokens (order_id, attempt, token, pid) VALUES (%s, %s, %s, %s)",
                     (order, info.attempt, info.task_token, os.getpid()))
    activity.raise_complete_async()


@workflow.defn
async def checkout(order: str) -> dict[str, Any]:
    charge = await workflow.execute_activity(charge_card, order, start_to_close_timeout=60)
    return {"order": order, "charge": charge}
