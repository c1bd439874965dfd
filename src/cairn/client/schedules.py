"""Schedules on the client's side (Temporal's ``client.create_schedule`` and
``ScheduleHandle``): create, list, describe, pause, unpause, trigger, backfill, update,
delete. Every change locks the schedule's row, so it never races a worker firing it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cairn.client.checks import lookup_id, validate_id
from cairn.errors import InputValidationError, ScheduleAlreadyRunning, ScheduleNotFound
from cairn.options import Priority, shown
from cairn.payloads import check_memo, to_payload, unref
from cairn.schedules import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    check_overlap,
    next_check,
)
from cairn.store import schedules as store
from cairn.store.runs import Conn

if TYPE_CHECKING:
    from cairn.client.client import Client

MAX_BACKFILL_SLOTS = 10_000  # slots one backfill call acts on at most
RECENT_ACTIONS = 10          # actions a description shows (Temporal shows 10 too)
NEXT_TIMES = 5               # next action times a description shows
MAX_LIST = 10_000


@dataclass(frozen=True)
class ScheduleActionResult:
    """One slot acted on: its nominal time, when it was acted on, and what came of it."""

    scheduled_at: datetime  # the slot
    actual_time: datetime   # when it was acted on
    kind: str               # scheduled, trigger, backfill
    status: str             # started, buffered, skipped
    workflow_id: str
    run_id: str | None
    run_status: str | None

    def to_json(self) -> dict[str, Any]:
        return {"scheduled_at": self.scheduled_at.isoformat(), "actual_time": self.actual_time.isoformat(),
                "kind": self.kind, "status": self.status, "workflow_id": self.workflow_id,
                "run_id": self.run_id, "run_status": self.run_status}


@dataclass(frozen=True)
class ScheduleInfo:
    """What a schedule did and will do (Temporal's ScheduleInfo)."""

    num_actions: int                        # runs started
    num_actions_skipped_overlap: int
    num_actions_missed_catchup_window: int
    num_actions_buffered: int               # waiting for the running ones to close
    running_actions: list[tuple[str, str]]  # (workflow id, run id) of its open runs
    recent_actions: list[ScheduleActionResult]  # newest first
    next_action_times: list[datetime]
    created_at: datetime
    last_updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"num_actions": self.num_actions, "num_actions_skipped_overlap": self.num_actions_skipped_overlap,
                "num_actions_missed_catchup_window": self.num_actions_missed_catchup_window,
                "num_actions_buffered": self.num_actions_buffered,
                "running_actions": [{"workflow_id": w, "run_id": r} for w, r in self.running_actions],
                "recent_actions": [a.to_json() for a in self.recent_actions],
                "next_action_times": [t.isoformat() for t in self.next_action_times],
                "created_at": self.created_at.isoformat(), "last_updated_at": self.last_updated_at.isoformat()}


@dataclass
class ScheduleDescription:
    """A schedule as stored (its action's workflow as a type name) and its info."""

    id: str
    schedule: Schedule
    info: ScheduleInfo = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        a = self.schedule.action
        return {"id": self.id, "spec": self.schedule.spec.to_json(), "policy": self.schedule.policy.to_json(),
                "state": {"paused": self.schedule.state.paused, "note": self.schedule.state.note},
                "action": {"workflow": a.workflow, "args": list(a.args), "id": a.id, "queue": a.queue,
                           "execution_timeout": a.execution_timeout.total_seconds() if a.execution_timeout else None,
                           "memo": a.memo, "priority": a.priority.to_json() if a.priority else None,
                           "concurrency_key": a.concurrency_key},
                "info": self.info.to_json()}


@dataclass(frozen=True)
class ScheduleListEntry:
    """A schedule in a listing."""

    id: str
    paused: bool
    note: str
    workflow_type: str
    next_action_time: datetime | None
    spec: ScheduleSpec

    @property
    def info(self) -> dict[str, Any]:
        return {"workflow_type": self.workflow_type, "paused": self.paused, "note": self.note,
                "next_action_time": self.next_action_time.isoformat() if self.next_action_time else None}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.info, "spec": self.spec.to_json()}


@dataclass
class ScheduleUpdate:
    """What an update callback returns: the schedule as it should be (None: no change)."""

    schedule: Schedule | None


@dataclass(frozen=True)
class ScheduleUpdateInput:
    """What :meth:`ScheduleHandle.update`'s updater gets (Temporal's name): the schedule's
    current description."""

    description: ScheduleDescription


class ScheduleList(list[ScheduleListEntry]):
    """The schedules :meth:`cairn.Client.list_schedules` returns: a list, which also
    iterates with ``async for`` (Temporal's ``list_schedules`` returns an async iterator)."""

    async def __aiter__(self) -> AsyncIterator[ScheduleListEntry]:
        for entry in self:
            yield entry


async def action_json(client: Client, action: ScheduleActionStartWorkflow) -> dict[str, Any]:
    """The stored form of an action, checked as a start would be (before anything is written)."""
    if not isinstance(action, ScheduleActionStartWorkflow):
        raise InputValidationError("a schedule's action is a ScheduleActionStartWorkflow")
    if action.id is not None:
        validate_id(action.id)
    params, _ = await client._start_params(action.workflow, tuple(action.args), None, action.queue, "fail",
                                           execution_timeout=action.execution_timeout, priority=action.priority,
                                           concurrency_key=action.concurrency_key)
    # Inline, as before the payload store: a schedule's row keeps its arguments for every
    # run it starts (each start stores them again; at most CAIRN_MAX_PAYLOAD_BYTES).
    args = to_payload(unref(params["data"].obj["input"]), store=False)
    out: dict[str, Any] = {"workflow_type": params["workflow_type"], "queue": params["queue"], "args": args,
                           "id": action.id, "execution_timeout": params["execution_timeout"],
                           "memo": check_memo(action.memo)}
    # What the runs are started with (start_params' forms); absent when unset, as in rows
    # stored before schedules had them.
    started = params["data"].obj
    out.update({k: started[k] for k in ("priority", "concurrency_key") if k in started})
    return out


def _checked(schedule: Schedule) -> tuple[ScheduleSpec, SchedulePolicy]:
    if not isinstance(schedule, Schedule):
        raise InputValidationError("expected a cairn.schedules.Schedule")
    return schedule.spec.check(), schedule.policy.check()


async def create(client: Client, schedule_id: str, schedule: Schedule, *,
                 trigger_immediately: bool = False, backfill: Sequence[ScheduleBackfill] = ()) -> ScheduleHandle:
    """See :meth:`cairn.Client.create_schedule`."""
    validate_id(schedule_id)
    spec, policy = _checked(schedule)
    action = await action_json(client, schedule.action)
    if not isinstance(schedule.state.note, str):
        raise InputValidationError("a schedule's note is a string")
    _check_backfills(spec, backfill)

    async def write(c: Conn) -> None:
        async with c.transaction():
            at = await store.now(c)
            row = store.ScheduleRow(client.namespace, schedule_id, spec.to_json(), action, policy.to_json(),
                                    bool(schedule.state.paused), schedule.state.note, at,
                                    next_check(spec, schedule_id, at), 0, at, at)
            if not await store.insert(c, row):
                raise ScheduleAlreadyRunning(f"schedule {schedule_id!r} exists already")
            if trigger_immediately:
                await store.act(c, row, at, "trigger", policy.overlap, at)
            await _backfill(c, row, backfill, at)

    await client._write(write, what=f"creating schedule {schedule_id!r}",
                        check=f"see `cairn schedule describe {schedule_id}` before creating it again")
    return ScheduleHandle(client, schedule_id)


async def list_schedules(client: Client, limit: int = MAX_LIST) -> ScheduleList:
    """See :meth:`cairn.Client.list_schedules`."""
    rows = await client._read(lambda c: store.list_rows(c, client.namespace, limit))
    out = ScheduleList()
    for r in rows:
        out.append(ScheduleListEntry(r.schedule_id, r.paused, r.note, r.action["workflow_type"],
                                     None if r.paused else r.next_check_at, ScheduleSpec.from_json(r.spec)))
    return out


def _check_backfills(spec: ScheduleSpec, backfills: Sequence[ScheduleBackfill]) -> None:
    total = 0
    for b in backfills:
        if not isinstance(b, ScheduleBackfill):
            raise InputValidationError("expected ScheduleBackfill values")
        start, end = _aware(b.start_at, "start_at"), _aware(b.end_at, "end_at")
        if end < start:
            raise InputValidationError("a backfill's end_at is before its start_at")
        if b.overlap is not None:
            check_overlap(b.overlap)
        for _ in spec.slots(start - timedelta(microseconds=1), end):
            total += 1
            if total > MAX_BACKFILL_SLOTS:
                raise InputValidationError(f"a backfill may act on {MAX_BACKFILL_SLOTS} slots at most: "
                                           "split the range")


def _aware(t: datetime, name: str) -> datetime:
    if not isinstance(t, datetime):
        raise InputValidationError(f"a backfill's {name} is a datetime")
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # naive: UTC, as Temporal's timestamps


async def _backfill(c: Conn, row: store.ScheduleRow, backfills: Sequence[ScheduleBackfill], at: datetime) -> None:
    """Acts on each backfill's slots (the catch-up window does not apply)."""
    spec, policy = ScheduleSpec.from_json(row.spec), SchedulePolicy.from_json(row.policy)
    for b in backfills:
        overlap = check_overlap(b.overlap) if b.overlap is not None else policy.overlap
        start, end = _aware(b.start_at, "start_at"), _aware(b.end_at, "end_at")
        for slot in list(spec.slots(start - timedelta(microseconds=1), end)):
            await store.act(c, row, slot, "backfill", overlap, at)


class ScheduleHandle:
    """A handle on a schedule (Temporal's ``ScheduleHandle``)."""

    def __init__(self, client: Client, schedule_id: str) -> None:
        self.client = client
        self.id = lookup_id(schedule_id)

    async def _locked(self, change: Callable[[Conn, store.ScheduleRow, datetime], Awaitable[None]],
                      what: str) -> None:
        """Runs ``change`` in a transaction holding the schedule's row lock; then the
        workers look at it again (waiting actions may start)."""

        async def write(c: Conn) -> None:
            async with c.transaction():
                at = await store.now(c)
                row = await store.get(c, self.client.namespace, self.id, lock=True)
                if row is None:
                    raise ScheduleNotFound(f"no schedule with id {shown(self.id)}")
                await change(c, row, at)

        await self.client._write(write, what=f"{what} schedule {self.id!r}",
                                 check=f"see `cairn schedule describe {self.id}`")

    async def describe(self) -> ScheduleDescription:
        """The schedule, its recent actions, open runs and next action times."""
        ns = self.client.namespace

        async def read(c: Conn) -> ScheduleDescription:
            row = await store.get(c, ns, self.id)
            if row is None:
                raise ScheduleNotFound(f"no schedule with id {shown(self.id)}")
            recent = await store.recent_actions(c, ns, self.id, RECENT_ACTIONS)
            started, buffered, skipped = await store.action_counts(c, ns, self.id)
            running = await store.running_runs(c, row)
            return _description(row, recent, (started, buffered, skipped), running)

        return await self.client._read(read)

    async def pause(self, note: str | None = None) -> None:
        """Stops acting on slots until :meth:`unpause` (slots in between are not caught up)."""
        text = "Paused via Cairn client" if note is None else _note(note)

        async def change(c: Conn, row: store.ScheduleRow, at: datetime) -> None:
            await store.save(c, replace(row, paused=True, note=text), at)

        await self._locked(change, "pausing")

    async def unpause(self, note: str | None = None) -> None:
        """Acts on slots again, from now on."""
        text = "Unpaused via Cairn client" if note is None else _note(note)

        async def change(c: Conn, row: store.ScheduleRow, at: datetime) -> None:
            until = max(row.processed_until, at) if row.paused else row.processed_until
            spec = ScheduleSpec.from_json(row.spec)
            await store.save(c, replace(row, paused=False, note=text, processed_until=until,
                                        next_check_at=next_check(spec, self.id, until)), at)

        await self._locked(change, "unpausing")

    async def trigger(self, overlap: ScheduleOverlapPolicy | str | None = None) -> None:
        """Acts now, as a slot at this moment, with ``overlap`` (default: the schedule's)."""
        chosen = check_overlap(overlap) if overlap is not None else None

        async def change(c: Conn, row: store.ScheduleRow, at: datetime) -> None:
            await store.act(c, row, at, "trigger", chosen or SchedulePolicy.from_json(row.policy).overlap, at)
            await self._soon(c, row, at)

        await self._locked(change, "triggering")

    async def backfill(self, *backfills: ScheduleBackfill) -> None:
        """Acts on the spec's slots in each range as if they had come (each with its overlap
        policy, default the schedule's); slots acted on before are left as they were."""
        spec = ScheduleSpec.from_json((await self._row()).spec)
        _check_backfills(spec, backfills)

        async def change(c: Conn, row: store.ScheduleRow, at: datetime) -> None:
            await _backfill(c, row, backfills, at)
            await self._soon(c, row, at)

        await self._locked(change, "backfilling")

    async def update(self, updater: Callable[[ScheduleUpdateInput], Awaitable[ScheduleUpdate | None]
                                             | ScheduleUpdate | None]) -> None:
        """Changes the schedule: ``updater`` gets a :class:`ScheduleUpdateInput` (its
        ``description``, as Temporal's) and returns a :class:`ScheduleUpdate` (or None: no
        change). Slots already past are not acted on again."""
        desc = await self.describe()
        out = updater(ScheduleUpdateInput(desc))
        if isinstance(out, Awaitable):
            out = await out
        if out is None or out.schedule is None:
            return
        spec, policy = _checked(out.schedule)
        action = await action_json(self.client, out.schedule.action)
        state = out.schedule.state

        async def change(c: Conn, row: store.ScheduleRow, at: datetime) -> None:
            until = max(row.processed_until, at)
            await store.save(c, replace(row, spec=spec.to_json(), action=action, policy=policy.to_json(),
                                        paused=bool(state.paused), note=_note(state.note), processed_until=until,
                                        next_check_at=next_check(spec, self.id, until)), at)

        await self._locked(change, "updating")

    async def delete(self) -> None:
        """Deletes the schedule (the runs it started are left as they are)."""
        ns = self.client.namespace

        async def write(c: Conn) -> None:
            if not await store.delete(c, ns, self.id):
                raise ScheduleNotFound(f"no schedule with id {shown(self.id)}")

        await self.client._write(write, what=f"deleting schedule {self.id!r}",
                                 check=f"see `cairn schedule describe {self.id}`")

    async def _row(self) -> store.ScheduleRow:
        row = await self.client._read(lambda c: store.get(c, self.client.namespace, self.id))
        if row is None:
            raise ScheduleNotFound(f"no schedule with id {shown(self.id)}")
        return row

    @staticmethod
    async def _soon(c: Conn, row: store.ScheduleRow, at: datetime) -> None:
        """Waiting actions are started by a worker's next pass: bring it forward."""
        check = at if row.next_check_at is None else min(row.next_check_at, at)
        await store.save(c, replace(row, next_check_at=check), at)


def _note(note: Any) -> str:
    if not isinstance(note, str):
        raise InputValidationError("a schedule's note is a string")
    return note


def _description(row: store.ScheduleRow, recent: list[store.ActionRow], counts: tuple[int, int, int],
                 running: list[tuple[str, str]]) -> ScheduleDescription:
    spec, policy = ScheduleSpec.from_json(row.spec), SchedulePolicy.from_json(row.policy)
    a = row.action
    action = ScheduleActionStartWorkflow(a["workflow_type"], *a.get("args") or (), id=a.get("id"), queue=a["queue"],
                                        execution_timeout=timedelta(seconds=a["execution_timeout"])
                                        if a.get("execution_timeout") else None, memo=a.get("memo"),
                                        priority=Priority.from_json(a.get("priority")),
                                        concurrency_key=a.get("concurrency_key"))
    started, buffered, skipped = counts
    after = max(row.processed_until, datetime.now(UTC))
    info = ScheduleInfo(
        num_actions=started, num_actions_skipped_overlap=skipped,
        num_actions_missed_catchup_window=row.missed_slots, num_actions_buffered=buffered,
        running_actions=[(w, r) for r, w in running],
        recent_actions=[ScheduleActionResult(x.slot, x.taken_at, x.kind, x.status, x.workflow_id, x.run_id,
                                             x.run_status) for x in recent],
        next_action_times=[] if row.paused else spec.next_slots(after, NEXT_TIMES),
        created_at=row.created_at, last_updated_at=row.updated_at)
    return ScheduleDescription(row.schedule_id, Schedule(action=action, spec=spec, policy=policy,
                                                         state=ScheduleState(note=row.note, paused=row.paused)), info)
