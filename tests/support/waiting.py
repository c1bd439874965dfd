"""Bounded waiting: poll a condition until it holds, and fail the test with what was awaited
when it does not in time. ``wait_for`` blocks (subprocess tests); ``wait_until`` awaits, so
in-process workers run meanwhile."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from support.workers import WorkerProc

TIMEOUT = 60.0  # generous: the machine may be loaded


def wait_for(what: str, check: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.1,
             procs: Iterable[WorkerProc] = ()) -> Any:
    """Polls ``check`` until it returns something truthy and returns that; fails the test after
    ``timeout`` seconds, with the logs of ``procs``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} (rc={p.proc.poll()}):\n{p.log()}" for p in procs)
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(interval)


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05,
                     what: str = "condition") -> Any:
    """Polls ``predicate`` (sync or async) until it returns something truthy and returns that;
    raises AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
