"""Re-records the golden histories in this directory against a real database.

    CAIRN_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/cairn_golden \\
        .venv/bin/python tests/histories/regenerate.py [FILE.json ...]

The database is migrated if needed; each golden workflow (or only the named files) is run
once by an in-process worker, then ``cairn history --json`` writes its history next to
this file. After re-recording, update the exact seq values asserted in
``tests/unit/test_replay.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import golden_workflows as g  # this directory is the script's: first on sys.path
import unpatched_workflows as old

from cairn import WorkflowFailure, testing
from cairn.store import db

HERE = Path(__file__).resolve().parent

RUNS = {  # file name -> (workflow, input)
    "pipeline_completed.json": (g.golden_pipeline, 21),
    "retry_failed_caught.json": (g.golden_retry, 7),
    "saga_compensated.json": (g.golden_saga, "lisbon"),
    # Recorded by the code before the change that golden_patched guards with patched().
    "patched.json": (old.golden_patched_before, 5),
    "patched_new_run.json": (g.golden_patched, 5),
    "signal_driven.json": (g.golden_signals, "golden"),
}
# Signals sent, one after another, right after a run's start (file name -> [(name, payload)]).
SIGNALS: dict[str, list[tuple[str, Any]]] = {
    "signal_driven.json": [("add", 2), ("greet", "ada"), ("add", 3), ("greet", "bob"), ("finish", 2)],
}


async def record(url: str, names: list[str]) -> None:
    for name in names:
        await record_one(url, name)


async def record_one(url: str, name: str) -> None:
    """One worker per file: the old and new code of golden_patched share a type name."""
    fn, arg = RUNS[name]
    activities = [g.double, g.greet, g.always_fails, g.reserve, g.sold_out, g.cancel]
    async with testing.worker(url, workflows=[fn], activities=activities, poll_interval=0.1) as client:
        wid = f"golden-{Path(name).stem}-{uuid.uuid4().hex[:6]}"
        handle = await client.start(fn, arg, id=wid)
        for signal, payload in SIGNALS.get(name, []):
            await handle.signal(signal, payload)
        try:
            print(name, "->", await handle.result(timeout=30))
        except WorkflowFailure as err:
            print(name, "-> failed:", err.message)
        done = await asyncio.to_thread(
            subprocess.run, [str(Path(sys.executable).with_name("cairn")), "history", wid, "--json"],
            env={**os.environ, "CAIRN_DATABASE_URL": url}, check=True, capture_output=True, text=True,
        )
        out = done.stdout
        (HERE / name).write_text(out if out.endswith("\n") else out + "\n")


def main() -> None:
    url = os.environ.get("CAIRN_DATABASE_URL")
    if not url:
        sys.exit("set CAIRN_DATABASE_URL to a database this script may migrate and write to")
    names = sys.argv[1:] or list(RUNS)
    unknown = set(names) - set(RUNS)
    if unknown:
        sys.exit(f"unknown golden files {sorted(unknown)}; known: {', '.join(RUNS)}")
    db.migrate(url)
    asyncio.run(record(url, names))


if __name__ == "__main__":
    main()
