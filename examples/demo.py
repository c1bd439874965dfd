"""`make demo`: runs the checkout example end to end on the embedded Postgres.

Starts an in-process worker, starts a workflow, waits for its result, prints the result
and the run's history. Pass --database-url (or set CAIRN_DATABASE_URL) to use another
Postgres instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkout import Order, charge, checkout

from cairn import Client, Worker, db
from cairn.engine.history import summarize


async def main(url: str) -> None:
    async with await Client.connect(url) as client, Worker(url, workflows=[checkout], activities=[charge]):
        order = Order(id=f"o-{int(time.time())}", amount=42)
        handle = await client.start(checkout, order, id=f"order-{order.id}")
        print(f"started checkout as {handle.workflow_id} (run {handle.run_id})")
        result = await handle.result(timeout=60)
        print(f"\nresult: {json.dumps(result)}\n")
        print(f"{'SEQ':<4} {'EVENT':<20} DETAILS")
        for event in await handle.history():
            print(f"{event.seq:<4} {event.type:<20} {summarize(event)[:110]}")
        print(f"\nsee it again with: cairn history {handle.workflow_id}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None, help="Postgres to use (default: embedded)")
    args = parser.parse_args()
    if args.database_url:
        target = args.database_url
    else:
        print("starting the embedded Postgres (first run initialises it)...", flush=True)
        target = db.embedded_url()
    applied = db.migrate(target)  # `cairn db migrate` does the same
    if applied:
        print(f"applied migrations {applied}")
    asyncio.run(main(target))
