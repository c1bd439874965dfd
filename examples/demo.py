"""`make demo`: runs the checkout example end to end on the embedded Postgres, then the
LLM example against a fake provider that answers a 429 and then fails the primary model.

Starts an in-process worker, starts a workflow, waits for its result, prints the result
and the run's history; for the LLM run also the breakers' states. Pass --database-url
(or set CAIRN_DATABASE_URL) to use another Postgres instead.

Its runs go to their own queue, ``demo``, so a worker you left running on another queue
(the README's quick start, yours) never takes them; a run that still does not finish in
time stops the demo with a message saying where to look, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkout import Order, charge, checkout
from summarize import Doc, summarize

from cairn import Client, Worker, WorkflowHandle, WorkflowTimeout, breakers
from cairn.cli._base import table
from cairn.llm import configure_providers
from cairn.llm import fake as f
from cairn.llm.chat import breaker_name
from cairn.store import db
from cairn.views import summarize as summary

QUEUE = "demo"
RESULT_TIMEOUT_SECONDS = 60.0  # per run, by default (--timeout)


def _cairn() -> str:
    """How to run the CLI from where the demo was started: the venv's ``cairn``, which is
    not on PATH unless the venv is activated (``.venv/bin/cairn`` after ``make demo``)."""
    path = Path(sys.executable).parent / "cairn"
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


CAIRN = _cairn()


class DemoStuck(Exception):
    """A demo run did not finish in time: the message says what to check."""


async def result_of(handle: WorkflowHandle, timeout: float) -> object:
    """The run's result, or DemoStuck with the run's id and what to look at."""
    try:
        return await handle.result(timeout=timeout)
    except WorkflowTimeout:
        raise DemoStuck(
            f"run {handle.workflow_id} did not finish within {timeout:g} s. Is another worker "
            f"serving queue {QUEUE!r} with different code? See what it waits for: "
            f"{CAIRN} describe {handle.workflow_id}") from None


async def main(url: str, timeout: float) -> None:
    async with (await Client.connect(url) as client,
                Worker(url, workflows=[checkout], activities=[charge], queues=[QUEUE])):
        order = Order(id=f"o-{int(time.time())}", amount=42)
        handle = await client.start(checkout, order, id=f"order-{order.id}", queue=QUEUE)
        print(f"started checkout as {handle.workflow_id} (run {handle.run_id})")
        result = await result_of(handle, timeout)
        print(f"\nresult: {json.dumps(result)}\n")
        print(f"{'SEQ':<4} {'EVENT':<20} DETAILS")
        for event in await handle.history():
            print(f"{event.seq:<4} {event.type:<20} {summary(event)[:110]}")
        print(f"\nsee it again with: {CAIRN} history {handle.workflow_id}")
    await llm_demo(url, timeout)


async def llm_demo(url: str, timeout: float) -> None:
    """A summarize workflow riding through a 429 (Retry-After: 1), which opens deepseek's
    breaker for that second fleet-wide and reschedules the call without burning an attempt,
    then two 500s, which burn two attempts: the per-call fallback policy then gives the
    third attempt to gpt-4o-mini, which serves."""
    print("\n=== LLM call: 429 -> rescheduled; 500, 500 -> the fallback serves attempt 3 ===")
    with f.running_fake() as fake:
        provider = fake.provider_config(models=["deepseek-chat", "gpt-4o-mini"])
        configure_providers([provider])
        fake.script([f.rate_limited("1", model="deepseek-chat"), f.status(500, model="deepseek-chat", times=2)],
                    default=f.ok("Cairn makes flaky LLM providers reliable.", input_tokens=812, output_tokens=9))
        async with (await Client.connect(url) as client,
                    Worker(url, workflows=[summarize], queues=[QUEUE], poll_interval=0.2)):
            started = time.monotonic()
            doc = Doc(id=f"d-{int(time.time())}", text="Cairn is a durable workflow engine on Postgres...")
            handle = await client.start(summarize, doc, id=f"summarize-{doc.id}", queue=QUEUE)
            result = await result_of(handle, timeout)
            print(f"result after {time.monotonic() - started:.1f} s: {result!r}\n")
            for r in fake.requests():
                print(f"  fake provider got {r['model']:<14} -> {r['outcome']}")
            print(f"\n{'SEQ':<4} {'EVENT':<20} DETAILS")
            for event in await handle.history():
                print(f"{event.seq:<4} {event.type:<20} {summary(event)[:140]}")
            totals = (await handle.describe()).llm_totals or {}
            print(f"\ntotal: {totals.get('input_tokens')} in / {totals.get('output_tokens')} out tokens, "
                  f"${totals.get('cost_usd') or 0:.6f}\n")
            async with client.pool.connection() as conn:
                # This run's breakers only: the fake listens on a new port each run, and a breaker is
                # per provider URL and model, so an earlier demo's breakers are in the database too.
                rows = [b for b in await breakers.describe(conn)
                        if b["name"] in {breaker_name(provider, m) for m in provider.models}]
            print(table([[b["name"].split(":")[1], b["state"],
                          str(b["counters"]["failed"]), str(b["counters"]["not_permitted"]),
                          str(b["open_until"] or "-")] for b in rows],
                        ["BREAKER (MODEL)", "STATE", "FAILED", "NOT PERMITTED", "OPEN UNTIL"]))
            print(f"\nsee it again with: {CAIRN} describe {handle.workflow_id}; {CAIRN} breakers")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None, help="Postgres to use (default: embedded)")
    parser.add_argument("--timeout", type=float, default=RESULT_TIMEOUT_SECONDS,
                        help="seconds to wait for each run (default: %(default)s)")
    args = parser.parse_args()
    if args.database_url:
        target = args.database_url
    else:
        print("starting the embedded Postgres (first run initialises it)...", flush=True)
        target = db.embedded_url()
    applied = db.migrate(target)  # `cairn db migrate` does the same
    if applied:
        print(f"applied migrations {applied}")
    try:
        asyncio.run(main(target, args.timeout))
    except DemoStuck as exc:
        sys.exit(f"error: the demo could not finish: {exc}")
