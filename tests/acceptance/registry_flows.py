"""Workflows and activities for the type-registry acceptance tests (issue 15, B8-B10).

Each worker process imports one of the ``registry_*`` modules, which import part of these:
workers on the same queue with disjoint types. Activities return their process id, so a
test can tell which worker ran them.
"""

from __future__ import annotations

import os

from cairn import activity, workflow


@activity.defn
async def act_a() -> int:
    return os.getpid()


@activity.defn
async def act_b() -> int:
    return os.getpid()


@activity.defn
async def act_c() -> int:
    return os.getpid()


@workflow.defn
async def split(n: int) -> dict[str, int]:
    a = await workflow.execute_activity(act_a, start_to_close_timeout=30)
    b = await workflow.execute_activity(act_b, start_to_close_timeout=30)
    return {"a": a, "b": b}


@workflow.defn
async def other_kind(n: int) -> int:
    return await workflow.execute_activity(act_b, start_to_close_timeout=30)


@workflow.defn
async def needs_c(n: int) -> int:
    return await workflow.execute_activity(act_c, start_to_close_timeout=30)


@workflow.defn(name="shared")
async def shared_int(n: int) -> str:
    return f"int {n}"


@workflow.defn(name="shared")
async def shared_text(text: str) -> str:
    return f"text {text}"
