"""The invariant checker: reads a Cairn database (and a log of what clients were told) and
reports every violation of the engine's promises.

```python
report = await verify(url, acks="acks.jsonl", workflows=[order_flow], effects_table="chaos.effects",
                      canaries=[secret], log_files=["worker.log"], settle_timeout=30, expect_reexecution=True)
assert report.ok(), report.to_json()
```

Structural checks are one SQL statement each over every run (window functions for seq
gaps, GROUP BY for double outcomes), so their cost is a few scans of ``cairn.history``;
replays and saga checks stream histories a page of runs at a time. ``cairn verify`` is the
command-line face of :func:`verify`. Each check is one
statement of :mod:`cairn.store.verify`, named after the invariant it checks
(ARCHITECTURE.md, "Invariants", says where each is enforced). It writes nothing and takes
no lock. The invariants, and how each is checked:

- ``run.stuck``, ``lease.expired``, ``tasks.not_drained``: the settle phase polls (every
  0.25 s until ``settle_timeout``) for open runs, activity leases past their expiry, and
  rows of the queue tables whose run is closed or missing; what remains is reported.
- ``start.lost``: every ``ok`` acknowledgement's run exists. ``start.duplicated``: a
  workflow id acknowledged ``ok`` or ``ambiguous`` has no more *first* runs (not
  continue-as-new successors, not reset or retry copies) than distinct acknowledged run ids.
- ``history.gap`` (``lag(seq)``: starts at 1, +1 each), ``history.no_start`` (seq 1 is
  ``WorkflowStarted``), ``history.orphan`` (no history without a run),
  ``history.after_terminal`` (nothing after the first terminal event),
  ``history.status_mismatch`` (``runs.status`` is what the terminal event says),
  ``history.unmatched`` (every outcome has its scheduling event: activities, timers,
  children).
- ``payload.missing``, ``payload.unlinked``: every reference to a stored payload, in history
  and in the live rows that carry payloads (inbox, activity inputs, updates, query
  requests), names a payload in ``cairn.payloads`` that is linked to the run in
  ``cairn.run_payloads`` (else a purge of another run may take it); ``payload.orphan_link``:
  no link of a run that does not exist. References inside stored payloads (an LLM call's
  messages) are not looked at: their compressed JSON is not SQL's to read. Payloads no run
  links are counted in the stats (``unlinked``: the sweep's, once past its grace period).
- ``activity.double_completion``, ``local_activity.double_outcome``: one outcome per
  activity seq (a dropped fence shows here) and one final marker per local activity.
- ``replay.diverged``, ``replay.failed``: every run of a type whose code is given replays
  with :func:`cairn.engine.instance.replay` (other types are counted as skipped);
  ``saga.compensation_order``: each saga's ``compensation_started`` list runs exactly once
  per index, newest first (any order when parallel), skipping only after a failed
  compensation with ``continue_on_error=False``.
- ``effects.missing``, ``effects.duplicated``: each completed effect-writing activity has
  exactly one row in the sink (``EFFECTS_DDL``, keyed by the idempotency key);
  ``effects.no_reexecution`` (with ``expect_reexecution``): some attempt > 1 was seen.
- ``secret.leaked``: every column of every ``cairn.*`` row, and every log line, scanned for
  each canary (as written and JSON-escaped); the detail names canary *#n*, never its value.

Limits: the saga check trusts the marker's list (a forged list with fewer compensations
passes); ``lease.expired`` looks at activity leases only (breaker probes and rate-limit
slots expire by design); the history statements scan all of ``cairn.history``: seconds
for millions of events, meant for after a test, not for a hot production database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cairn.engine import history as h
from cairn.engine.history import Event
from cairn.engine.instance import replay
from cairn.errors import (
    ConfigurationError,
    InputValidationError,
    NonDeterminismError,
    WorkflowAlreadyStarted,
    WorkflowTaskFailed,
)
from cairn.saga import MARKER_KIND
from cairn.store import verify as store
from cairn.store.verify import Conn
from cairn.views import describe_sagas
from cairn.workflow import WorkflowDefinition, WorkflowInfo, definition_of

__all__ = ["EFFECTS_DDL", "EFFECT_INSERT", "AckLog", "Report", "StartRecord", "Violation", "read_acks", "saga_problems",
           "verify"]

# The effects sink a test creates: one row per step's effect (the idempotency key is the
# activity's, so a re-executed attempt writes nothing new), and every attempt logged, to
# prove that re-execution happened. ``kind`` is the activity type that wrote the effect.
EFFECTS_DDL = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE IF NOT EXISTS chaos.effects (
    idempotency_key text PRIMARY KEY,
    run_id uuid,
    seq int,
    attempt int,
    kind text,
    at timestamptz DEFAULT now()
);
CREATE TABLE IF NOT EXISTS chaos.attempts (
    run_id uuid,
    seq int,
    attempt int,
    at timestamptz DEFAULT now()
);
"""
# How an activity records its effect (parameters from activity.info()); a second attempt
# of the same step conflicts on the key and writes nothing.
EFFECT_INSERT = """
INSERT INTO chaos.effects (idempotency_key, run_id, seq, attempt, kind)
VALUES (%(idempotency_key)s, %(run_id)s, %(seq)s, %(attempt)s, %(kind)s)
ON CONFLICT (idempotency_key) DO NOTHING
"""

# Runs per page when streaming histories (replay, sagas): bounds memory, not correctness.
PAGE_RUNS = 500
# Workflow ids per query when checking acknowledgements.
ACK_BATCH = 5000
# How often the settle phase re-reads the database.
SETTLE_POLL_SECONDS = 0.25

_OUTCOME_EVENTS = (h.ACTIVITY_COMPLETED, h.ACTIVITY_FAILED, h.ACTIVITY_CANCELLED)
# Events that must follow their command: (event type, data key holding its seq, command).
_REFERENCES = [
    *[{"type": t, "key": "activity_seq", "command": h.ACTIVITY_SCHEDULED}
      for t in (*_OUTCOME_EVENTS, h.ACTIVITY_CANCEL_REQUESTED)],
    {"type": h.TIMER_FIRED, "key": "timer_seq", "command": h.TIMER_STARTED},
    {"type": h.TIMER_CANCELLED, "key": "timer_seq", "command": h.TIMER_STARTED},
    *[{"type": t, "key": "child_seq", "command": h.CHILD_WORKFLOW_SCHEDULED}
      for t in (*sorted(h.CHILD_EVENTS), h.CHILD_WORKFLOW_CANCEL_REQUESTED)],
]
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Refusals that prove the start wrote nothing (anything else may have committed).
_DEFINITE_REFUSALS: tuple[type[BaseException], ...] = (InputValidationError, ConfigurationError, WorkflowAlreadyStarted)

Outcome = Literal["ok", "error", "ambiguous"]


@dataclass
class Violation:
    """One broken invariant.

    Attributes:
        invariant: a short stable id, e.g. ``history.gap`` or ``start.lost``.
        run_id: the run concerned, if one is.
        workflow_id: its workflow id, if known.
        detail: what is wrong, in words (never a canary's value).
    """

    invariant: str
    run_id: str | None
    workflow_id: str | None
    detail: str


@dataclass
class Report:
    """What :func:`verify` found."""

    violations: list[Violation]
    checked_runs: int
    stats: dict[str, Any] = field(default_factory=dict)

    def ok(self) -> bool:
        """Whether no invariant is broken."""
        return not self.violations

    def by_invariant(self) -> dict[str, int]:
        """Violations counted per invariant id."""
        out: dict[str, int] = {}
        for v in self.violations:
            out[v.invariant] = out.get(v.invariant, 0) + 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"ok": self.ok(), "checked_runs": self.checked_runs, "by_invariant": self.by_invariant(),
                "violations": [asdict(v) for v in self.violations], "stats": self.stats}


# ---------------------------------------------------------------- the acknowledgement log


@dataclass
class StartRecord:
    """What :meth:`AckLog.starting` learns about one start: set ``run_id`` (or call
    :meth:`ok`) when the client returns a handle."""

    workflow_id: str
    namespace: str = "default"
    run_id: str | None = None
    outcome: Outcome | None = None
    error: str | None = None

    def ok(self, handle_or_run_id: Any) -> None:
        """Notes the run the client reported (a handle with ``run_id``, or the id)."""
        run_id = getattr(handle_or_run_id, "run_id", handle_or_run_id)
        self.run_id = None if run_id is None else str(run_id)


class AckLog:
    """The log of what clients were told about their starts: one JSON object per line,
    ``{"op": "start", "workflow_id", "run_id", "outcome": "ok" | "error" | "ambiguous",
    "error"}``, appended (and flushed) as each answer arrives. Safe to share between the
    tasks and threads of one process; several processes may append to one file (each line
    is one ``write`` in append mode).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record_start(self, workflow_id: str, *, run_id: str | None = None, outcome: Outcome = "ok",
                     error: str | None = None, error_type: str | None = None, namespace: str = "default") -> None:
        """Appends one start's outcome: ``ok`` (the client got a run id), ``error`` (a
        refusal that proves nothing was written), or ``ambiguous`` (the call failed in a way
        that may have committed: a lost connection, a timeout)."""
        if outcome not in ("ok", "error", "ambiguous"):
            raise InputValidationError(f"outcome must be ok, error or ambiguous, not {outcome!r}")
        entry: dict[str, Any] = {"op": "start", "workflow_id": workflow_id, "run_id": run_id, "outcome": outcome,
                                 "error": error}
        if error_type is not None:
            entry["error_type"] = error_type
        if namespace != "default":
            entry["namespace"] = namespace
        line = json.dumps(entry) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    @contextlib.asynccontextmanager
    async def starting(self, workflow_id: str, *, namespace: str = "default",
                       reraise: bool = True) -> AsyncIterator[StartRecord]:
        """Records the start made inside the block::

            async with ack_log.starting(wid) as rec:
                rec.ok(await client.start(flow, x, id=wid))

        A block that finishes is ``ok``; one that raises a definite refusal
        (``InputValidationError``, ``ConfigurationError``, ``WorkflowAlreadyStarted``) is
        ``error``; any other exception is ``ambiguous``. The exception propagates unless
        ``reraise`` is false.
        """
        rec = StartRecord(workflow_id, namespace)
        try:
            yield rec
        except Exception as exc:
            rec.outcome = "error" if isinstance(exc, _DEFINITE_REFUSALS) else "ambiguous"
            rec.error = f"{type(exc).__name__}: {exc}"
            self.record_start(workflow_id, run_id=rec.run_id, outcome=rec.outcome, error=rec.error,
                              error_type=type(exc).__name__, namespace=namespace)
            if reraise:
                raise
            return
        rec.outcome = "ok"
        self.record_start(workflow_id, run_id=rec.run_id, outcome="ok", namespace=namespace)


def read_acks(path: str | Path) -> list[dict[str, Any]]:
    """Reads an acknowledgement log, checking each line.

    Raises:
        InputValidationError: the file is missing or a line is not a start record.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputValidationError(f"cannot read the acknowledgement log {p}: {exc.strerror or exc}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputValidationError(f"{p} line {n}: not JSON ({exc.msg} at column {exc.colno})") from None
        if (not isinstance(entry, dict) or entry.get("op") != "start"
                or not isinstance(entry.get("workflow_id"), str)
                or entry.get("outcome") not in ("ok", "error", "ambiguous")
                or not isinstance(entry.get("run_id"), str | None)):
            raise InputValidationError(f"{p} line {n}: want {{\"op\": \"start\", \"workflow_id\": str, "
                                       f"\"run_id\": str|null, \"outcome\": \"ok\"|\"error\"|\"ambiguous\"}}")
        out.append(entry)
    return out


# ---------------------------------------------------------------- the checker


def _table(name: str, what: str) -> tuple[str, ...]:
    """The parts of a table name ([schema,] table), checked."""
    parts = tuple(name.split("."))
    if len(parts) > 2 or not all(_IDENT.match(p) for p in parts):
        raise InputValidationError(f"{what} {name!r} is not a table name (want schema.table)")
    return parts


async def verify(
    url: str,
    *,
    acks: str | Path | None = None,
    workflows: Iterable[Callable[..., Any]] = (),
    effects_table: str | None = None,
    canaries: Iterable[str] = (),
    log_files: Iterable[str | Path] = (),
    settle_timeout: float = 0.0,
    expect_reexecution: bool = False,
    attempts_table: str | None = None,
    effect_kinds: Iterable[str] | None = None,
) -> Report:
    """Checks every invariant over the database at ``url`` and returns every violation.

    Args:
        url: the database.
        acks: the acknowledgement log (see :class:`AckLog`), for ``start.*``.
        workflows: the current workflow code; runs of these types are replayed
            (``replay.*``), runs of other types are counted as skipped.
        effects_table: the effects sink (see :data:`EFFECTS_DDL`), for ``effects.*``.
        canaries: secrets that must appear in no ``cairn.*`` row and no log line.
        log_files: logs to scan for canaries.
        settle_timeout: seconds to wait for runs to close, leases to be reclaimed and task
            tables to drain before those are reported (``run.stuck``, ``lease.expired``,
            ``tasks.not_drained``).
        expect_reexecution: report ``effects.no_reexecution`` if no activity ever ran a
            second attempt (the faults did not exercise re-execution).
        attempts_table: the sink's attempt log; default ``<schema>.attempts`` beside the
            effects table, if it exists.
        effect_kinds: the activity types that write effects; default the kinds found in
            the sink.

    Raises:
        InputValidationError: a bad argument (missing acks or log file, bad table name,
            an effects table that does not exist, a callable that is not a workflow).
    """
    defs: dict[str, WorkflowDefinition] = {}
    for fn in workflows:
        d = definition_of(fn)
        defs[d.name] = d
    ack_entries = read_acks(acks) if acks is not None else None
    logs = [Path(p) for p in log_files]
    for p in logs:
        if not p.is_file():
            raise InputValidationError(f"log file {p} does not exist")
    secrets = list(canaries)
    if any(not s for s in secrets):
        raise InputValidationError("a canary must not be empty")
    effects = _table(effects_table, "effects table") if effects_table else None
    attempts = _table(attempts_table, "attempts table") if attempts_table else None

    out: list[Violation] = []
    stats: dict[str, Any] = {}
    started = time.monotonic()
    async with store.session(url) as conn:  # database errors become DatabaseError
        if effects is not None:
            assert effects_table is not None
            if not await store.table_exists(conn, effects_table):
                raise InputValidationError(f"effects table {effects_table} does not exist")
            if attempts is None and "." in effects_table:
                sibling = effects_table.split(".")[0] + ".attempts"
                if await store.table_exists(conn, sibling):
                    attempts = _table(sibling, "attempts table")
        settle = await _settle(conn, out, settle_timeout)
        stats["settle_seconds"] = round(settle, 3)
        by_status = await store.run_counts(conn)
        stats["runs_by_status"] = by_status
        checked = sum(by_status.values())
        if ack_entries is not None:
            await _check_acks(conn, ack_entries, out, stats)
        await _check_history(conn, out)
        await _check_payloads(conn, out, stats)
        await _check_replay(conn, defs, out, stats)
        await _check_sagas(conn, out, stats)
        await _check_effects(conn, effects, attempts, effect_kinds, expect_reexecution, out, stats)
        if secrets:
            await _check_canaries(conn, secrets, logs, out, stats)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return Report(out, checked, stats)


async def _settle(conn: Conn, out: list[Violation], timeout: float) -> float:
    """Waits (polling) until no run is open, no lease is expired and no queue row of a
    closed run remains, or the deadline passes; then reports what remains."""
    begin = time.monotonic()
    deadline = begin + max(timeout, 0.0)
    while True:
        open_runs = await store.open_runs(conn)
        leases = await store.expired_leases(conn)
        lingering = await store.lingering_tasks(conn)
        now = time.monotonic()
        if not (open_runs or leases or lingering) or now >= deadline:
            break
        await asyncio.sleep(min(SETTLE_POLL_SECONDS, deadline - now))
    waited = time.monotonic() - begin
    for run_id, wid, wtype, created in open_runs:
        out.append(Violation("run.stuck", run_id, wid,
                             f"{wtype} run created {created.isoformat()} is still running after {waited:.1f} s"))
    for run_id, wid, seq, atype, owner, expires in leases:
        out.append(Violation("lease.expired", run_id, wid,
                             f"activity {seq} ({atype}) leased to {owner} expired at {expires.isoformat()}"))
    for tbl, run_id, wid, status, n in lingering:
        what = "no such run" if status == "missing" else f"run is {status}"
        out.append(Violation("tasks.not_drained", run_id, wid, f"{n} row(s) in cairn.{tbl} ({what})"))
    return waited


async def _check_acks(conn: Conn, entries: list[dict[str, Any]], out: list[Violation], stats: dict[str, Any]) -> None:
    """start.lost / start.duplicated, from what clients were told."""
    per_id: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in entries:
        per_id.setdefault((str(e.get("namespace") or "default"), e["workflow_id"]), []).append(e)
    counts = {k: sum(1 for e in entries if e["outcome"] == k) for k in ("ok", "error", "ambiguous")}
    stats["acks"] = {"entries": len(entries), "workflow_ids": len(per_id), **counts}
    keys = list(per_id)
    runs: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for i in range(0, len(keys), ACK_BATCH):
        batch = keys[i:i + ACK_BATCH]
        for wid, ns, run_id, first in await store.runs_of_workflow_ids(conn, batch):
            runs.setdefault((ns, wid), []).append((run_id, bool(first)))
    claimed = sorted({e["run_id"] for e in entries if e["outcome"] == "ok" and e.get("run_id")})
    existing: set[str] = set()
    for i in range(0, len(claimed), ACK_BATCH):
        existing.update(await store.runs_exist(conn, claimed[i:i + ACK_BATCH]))
    ambiguous_committed = ambiguous_absent = 0
    for key, acks in per_id.items():
        wid = key[1]
        firsts = [r for r, first in runs.get(key, []) if first]
        ok_runs = {e["run_id"] for e in acks if e["outcome"] == "ok" and e.get("run_id")}
        for e in acks:
            if e["outcome"] == "ok" and e.get("run_id") and e["run_id"] not in existing:
                out.append(Violation("start.lost", e["run_id"], wid, "acknowledged start has no run"))
        acknowledged = any(e["outcome"] == "ok" for e in acks)
        if acknowledged and not ok_runs and not runs.get(key):
            out.append(Violation("start.lost", None, wid, "acknowledged start (no run id given) has no run"))
        ambiguous = any(e["outcome"] == "ambiguous" for e in acks)
        retried = ambiguous and any(
            e["outcome"] == "ok" or e.get("error_type") in ("WorkflowAlreadyStarted", "WorkflowIdReuseRefused")
            for e in acks)
        if ambiguous and retried and not firsts and not acknowledged:
            out.append(Violation("start.lost", None, wid,
                                 "an ambiguous start was retried and refused as already started, but no run exists"))
        allowed = max(1, len(ok_runs))
        if (acknowledged or ambiguous) and len(firsts) > allowed:
            out.append(Violation("start.duplicated", firsts[0], wid,
                                 f"{len(firsts)} runs for {allowed} start(s) ({'ambiguous, ' if ambiguous else ''}"
                                 f"runs {', '.join(sorted(firsts))})"))
        if ambiguous and not acknowledged:
            if firsts:
                ambiguous_committed += 1
            else:
                ambiguous_absent += 1
    stats["acks"].update(ambiguous_committed=ambiguous_committed, ambiguous_absent=ambiguous_absent)


async def _check_history(conn: Conn, out: list[Violation]) -> None:
    """The structural invariants, one statement each over every history."""
    terminal = list(h.TERMINAL_EVENTS)
    for run_id, wid, seq, prev in await store.history_gaps(conn):
        detail = f"history starts at seq {seq}" if prev is None else f"seq {prev} is followed by seq {seq}"
        out.append(Violation("history.gap", run_id, wid, detail))
    for run_id, wid, first in await store.history_start(conn):
        detail = "run has no history" if first is None else f"seq 1 is {first}, not {h.WORKFLOW_STARTED}"
        out.append(Violation("history.no_start", run_id, wid, detail))
    for run_id, n in await store.history_orphans(conn):
        out.append(Violation("history.orphan", run_id, None, f"{n} event(s) of a run that does not exist"))
    for run_id, wid, seq, type_, term in await store.after_terminal(conn, terminal):
        out.append(Violation("history.after_terminal", run_id, wid, f"{type_} at seq {seq} after the terminal "
                                                                     f"event at seq {term}"))
    for run_id, wid, status, last, expected in await store.status_vs_terminal(
            conn, terminal, [h.TERMINAL_EVENTS[t] for t in terminal]):
        detail = (f"run is {status} but history has no terminal event" if last is None
                  else f"run is {status} but history ends with {last} ({expected})")
        out.append(Violation("history.status_mismatch", run_id, wid, detail))
    for run_id, wid, seq, evs in await store.double_outcomes(conn):
        out.append(Violation("activity.double_completion", run_id, wid,
                             f"activity {seq} has {len(evs)} outcome events: {', '.join(evs)}"))
    for run_id, wid, seq, evs in await store.double_local_outcomes(conn):
        out.append(Violation("local_activity.double_outcome", run_id, wid,
                             f"local activity {seq} has {len(evs)} final markers: {', '.join(evs)}"))
    for run_id, wid, seq, type_, ref, command in await store.unmatched_events(conn, {"kinds": json.dumps(_REFERENCES)}):
        out.append(Violation("history.unmatched", run_id, wid,
                             f"{type_} at seq {seq} refers to seq {ref}, which is not an earlier {command}"))


async def _check_payloads(conn: Conn, out: list[Violation], stats: dict[str, Any]) -> None:
    """payload.missing / payload.unlinked / payload.orphan_link: the payload store's references."""
    faults: dict[tuple[str, str], tuple[str | None, str, int]] = {}  # (run, ref) -> (workflow, first place, places)
    for run_id, wid, place, refs in await store.unlinked_references(conn):
        for ref in refs:
            _, first, n = faults.get((run_id, ref), (wid, place, 0))
            faults[(run_id, ref)] = (wid, first, n + 1)
    stored = await store.stored_refs(conn, {ref for _, ref in faults}) if faults else set()
    for (run_id, ref), (wid, first, n) in faults.items():
        where = first + (f" (and {n - 1} more row(s))" if n > 1 else "")
        if ref in stored:
            out.append(Violation("payload.unlinked", run_id, wid, f"{where} refers to stored payload {ref}, which is "
                                                                  "not linked to the run (a purge may remove it)"))
        else:
            out.append(Violation("payload.missing", run_id, wid, f"{where} refers to stored payload {ref}, which is "
                                                                 "not in cairn.payloads"))
    for run_id, n in await store.links_without_run(conn):
        out.append(Violation("payload.orphan_link", run_id, None, f"{n} payload link(s) of a run that does not exist"))
    payloads, links, unlinked = await store.payload_counts(conn)
    stats["payloads"] = {"stored": payloads, "links": links, "unlinked": unlinked}


def _events(rows: Sequence[tuple[Any, ...]]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for run_id, seq, type_, data, at in rows:
        out.setdefault(run_id, []).append(Event(seq, type_, data or {}, at))
    return out


async def _check_replay(conn: Conn, defs: dict[str, WorkflowDefinition], out: list[Violation],
                        stats: dict[str, Any]) -> None:
    """replay.diverged / replay.failed: every run of a type with code, page by page."""
    types = sorted(defs)
    skipped = await store.skipped_types(conn, types)
    replayed = 0
    after = "00000000-0000-0000-0000-000000000000"
    while types:
        page = await store.runs_page(conn, types, after, PAGE_RUNS)
        if not page:
            break
        after = page[-1][0]
        histories = _events(await store.histories(conn, [r[0] for r in page]))
        for run_id, wid, wtype, queue, namespace, _status in page:
            events = histories.get(run_id, [])
            if not events:
                continue  # history.no_start has it
            info = WorkflowInfo(workflow_id=wid, run_id=run_id, workflow_type=wtype, queue=queue, namespace=namespace,
                                start_time=events[0].at or datetime.now(UTC))
            replayed += 1
            try:
                replay(defs[wtype], info, events)
            except NonDeterminismError as exc:
                out.append(Violation("replay.diverged", run_id, wid, str(exc)))
            except WorkflowTaskFailed as exc:
                if isinstance(exc.cause, NonDeterminismError):
                    out.append(Violation("replay.diverged", run_id, wid, str(exc.cause)))
                else:
                    out.append(Violation("replay.failed", run_id, wid, f"replay raised {exc}"))
            except Exception as exc:  # the checker reports a crashing replay, it does not stop at it
                out.append(Violation("replay.failed", run_id, wid, f"replay raised {type(exc).__name__}: {exc}"))
        await asyncio.sleep(0)
    stats["replay"] = {"replayed": replayed, "skipped": sum(skipped.values()), "skipped_by_type": skipped}


def saga_problems(events: list[Event], status: str) -> list[str]:
    """What is wrong with a run's sagas: each failed saga must run the compensations its
    ``compensation_started`` marker lists (the reverse of registration), each exactly
    once, in order unless parallel, each after the previous one finished; a compensation
    may be missing only after a failed one with ``continue_on_error=False``. A saga left
    running or compensating in a run its code closed is a problem too."""
    problems: list[str] = []
    scheduled: dict[tuple[Any, Any], list[Event]] = {}
    outcomes: dict[Any, Event] = {}
    started_at: dict[Any, int] = {}
    for e in events:
        d = e.data
        if e.type == h.ACTIVITY_SCHEDULED and "compensation" in d:
            scheduled.setdefault((d.get("saga"), d.get("compensation")), []).append(e)
        elif e.type in _OUTCOME_EVENTS:
            outcomes.setdefault(d.get("activity_seq"), e)
        elif (e.type == h.MARKER_RECORDED and d.get("kind") == MARKER_KIND
              and d.get("event") == "compensation_started"):
            started_at.setdefault(d.get("saga"), e.seq)
    closed_by_code = status in ("completed", "failed", "cancelled")
    for s in describe_sagas(events):
        sid = s["id"]
        if s["status"] == "running":
            if closed_by_code:
                problems.append(f"saga {sid} neither completed nor compensated before the run {status}")
            continue
        if sid not in started_at:
            extra = sorted(i for (k, i), _ in scheduled.items() if k == sid)
            if extra:
                problems.append(f"saga {sid} ran compensations {extra} without compensating")
            continue
        if s["status"] == "compensating" and closed_by_code:
            problems.append(f"saga {sid} never finished compensating before the run {status}")
        names = [c["activity_type"] for c in s["compensations"]]
        # describe_sagas overwrote listed names with scheduled activities; the marker's
        # list is the reference.
        listed = next((list(e.data.get("compensations") or []) for e in events
                       if e.type == h.MARKER_RECORDED and e.data.get("kind") == MARKER_KIND
                       and e.data.get("event") == "compensation_started" and e.data.get("saga") == sid), names)
        may_skip = False
        previous_done = started_at[sid]
        for i, name in enumerate(listed):
            runs = scheduled.get((sid, i), [])
            if len(runs) > 1:
                problems.append(f"saga {sid} compensation {i} ({name}) ran {len(runs)} times "
                                f"(seqs {', '.join(str(e.seq) for e in runs)})")
            if not runs:
                if not may_skip and closed_by_code:
                    problems.append(f"saga {sid} compensation {i} ({name}) never ran")
                continue
            first = runs[0]
            if first.data.get("activity_type") != name:
                problems.append(f"saga {sid} compensation {i} ran {first.data.get('activity_type')} "
                                f"where {name} was due")
            if not s.get("parallel_compensation") and first.seq < previous_done:
                problems.append(f"saga {sid} compensation {i} ({name}) started at seq {first.seq}, before "
                                f"compensation {i - 1} finished at seq {previous_done}")
            outcome = outcomes.get(first.seq)
            if outcome is None:
                if closed_by_code:
                    problems.append(f"saga {sid} compensation {i} ({name}) has no outcome")
                continue
            previous_done = max(previous_done, outcome.seq)
            if outcome.type != h.ACTIVITY_COMPLETED and s.get("continue_on_error") is False:
                may_skip = True
        extra = sorted(i for (k, i), _ in scheduled.items()
                       if k == sid and not (isinstance(i, int) and 0 <= i < len(listed)))
        if extra:
            problems.append(f"saga {sid} ran compensations {extra} that it never registered")
    return problems


async def _check_sagas(conn: Conn, out: list[Violation], stats: dict[str, Any]) -> None:
    """saga.compensation_order, streaming the runs that have saga markers."""
    checked = 0
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        page = await store.saga_runs_page(conn, after, PAGE_RUNS)
        if not page:
            break
        after = page[-1][0]
        histories = _events(await store.histories(conn, [r[0] for r in page]))
        for run_id, wid, status in page:
            checked += 1
            for problem in saga_problems(histories.get(run_id, []), status):
                out.append(Violation("saga.compensation_order", run_id, wid, problem))
        await asyncio.sleep(0)
    stats["saga_runs_checked"] = checked


async def _check_effects(conn: Conn, effects: tuple[str, ...] | None, attempts: tuple[str, ...] | None,
                         kinds: Iterable[str] | None, expect_reexecution: bool, out: list[Violation],
                         stats: dict[str, Any]) -> None:
    """effects.missing / effects.duplicated / effects.no_reexecution."""
    reexecuted = await store.reexecutions(conn)
    stats["reexecuted_activities"] = reexecuted
    if effects is not None:
        n, found_kinds, eff_re = await store.effects_stats(conn, effects)
        want = sorted(kinds) if kinds is not None else sorted(found_kinds)
        stats["effects"] = {"rows": int(n), "kinds": want, "reexecuted": int(eff_re)}
        reexecuted += int(eff_re)
        for run_id, wid, seq, atype in await store.effects_missing(conn, effects, want):
            out.append(Violation("effects.missing", run_id, wid, f"activity {seq} ({atype}) completed but wrote "
                                                                 "no effect"))
        for run_id, wid, seq, n_eff, tries in await store.effects_duplicated(conn, effects):
            out.append(Violation("effects.duplicated", run_id, wid, f"activity {seq} has {n_eff} effects "
                                                                    f"(attempts {tries})"))
        if attempts is not None:
            n_att, att_re = await store.attempts_stats(conn, effects, attempts)
            stats["attempts"] = {"rows": int(n_att), "reexecuted": int(att_re)}
            reexecuted += int(att_re)
    if expect_reexecution and not reexecuted:
        out.append(Violation("effects.no_reexecution", None, None,
                             "no activity ran a second attempt: the faults never exercised re-execution"))


def _forms(secret: str) -> list[str]:
    """The secret as written, and as it reads inside a JSON string."""
    escaped = json.dumps(secret)[1:-1]
    return [secret] if escaped == secret else [secret, escaped]


async def _check_canaries(conn: Conn, secrets: list[str], logs: list[Path], out: list[Violation],
                          stats: dict[str, Any]) -> None:
    """secret.leaked: every column of every cairn.* row as text, every line of every log.
    Details name the canary by its position, never by its value."""
    tables = await store.cairn_columns(conn)
    scanned = 0
    for table, columns, pkey in tables:
        key = len(pkey) or 1  # the key columns first (else the ctid), then one flag per column
        for n, secret in enumerate(secrets, 1):
            for row in await store.canary_hits(conn, table, columns, pkey, _forms(secret)):
                ident = ", ".join(f"{c}={v}" for c, v in zip(pkey or ["ctid"], row[:key], strict=True))
                flagged = [c for c, hit in zip(columns, row[key:], strict=True) if hit]
                run_id = row[pkey.index("run_id")] if "run_id" in pkey else None
                out.append(Violation("secret.leaked", run_id, None,
                                     f"canary #{n} in cairn.{table} column(s) {', '.join(flagged)} row ({ident})"))
        scanned += 1
    for path in logs:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                for n, secret in enumerate(secrets, 1):
                    if any(form in line for form in _forms(secret)):
                        out.append(Violation("secret.leaked", None, None, f"canary #{n} in {path} line {line_no}"))
    stats["canaries"] = {"canaries": len(secrets), "tables": scanned, "log_files": len(logs)}
