"""``cairn schedule``: create, list, describe, pause, unpause, trigger, backfill, delete."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from cairn.cli._base import Settings, fail, main, parse_json, priority_text, run, table, to_json, when, with_client
from cairn.cli.runs import _args_for, place, place_options
from cairn.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleBackfill,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from cairn.schedules import DEFAULT_CATCHUP_WINDOW

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
OVERLAPS = [p.value for p in ScheduleOverlapPolicy]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None, what: str) -> timedelta | None:
    """``90``, ``90s``, ``5m``, ``2h``, ``1d`` as a timedelta."""
    if text is None:
        return None
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise fail(f"{what} must be a duration such as 30, 90s, 5m, 2h or 1d, not {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def parse_time(text: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (UTC if it names no offset)."""
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{what} must be an ISO 8601 time such as 2026-01-31T09:00:00+01:00, not {text!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@main.group("schedule")
def schedule_group() -> None:
    """Schedules: start a workflow per cron or interval slot, once per slot."""


@schedule_group.command("create")
@click.argument("schedule_id")
@click.argument("workflow_type")
@click.option("--input", "input_", default=None, metavar="JSON|@FILE", help="The workflow's input as JSON.")
@click.option("--cron", "crons", multiple=True, help="A cron expression (repeatable): '0 9 * * MON-FRI'.")
@click.option("--every", "every", multiple=True, help="An interval (repeatable): 30s, 5m, 2h, 1d.")
@click.option("--offset", default=None, help="The intervals' offset from the epoch (a duration).")
@click.option("--time-zone", default="UTC", show_default=True, help="The cron expressions' IANA time zone.")
@click.option("--jitter", default=None, help="Delay each action by up to this (a duration).")
@click.option("--start-at", default=None, help="No slot before this ISO 8601 time.")
@click.option("--end-at", default=None, help="No slot after this ISO 8601 time.")
@click.option("--overlap", type=click.Choice(OVERLAPS), default="skip", show_default=True,
              help="What a slot does while an earlier run is open.")
@click.option("--catchup-window", default=None, help="After downtime, skip slots older than this (default 365d).")
@click.option("--workflow-id", default=None, help="The runs' workflow id prefix (default: the schedule id).")
@click.option("--queue", default=None, help="The runs' queue (default: as cairn start).")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--note", default="", help="A note (shown by describe).")
@place_options
@json_option
@click.pass_obj
def create_cmd(settings: Settings, schedule_id: str, workflow_type: str, input_: str | None, crons: tuple[str, ...],
               every: tuple[str, ...], offset: str | None, time_zone: str, jitter: str | None, start_at: str | None,
               end_at: str | None, overlap: str, catchup_window: str | None, workflow_id: str | None,
               queue: str | None, paused: bool, note: str, priority: int | None, fairness_key: str | None,
               fairness_weight: float | None, concurrency_key: str | None, as_json: bool) -> None:
    """Create schedule SCHEDULE_ID: a run of WORKFLOW_TYPE per slot of --cron/--every (each
    with --priority, --fairness-key, --fairness-weight and --concurrency-key, as cairn start)."""
    off = parse_duration(offset, "--offset") or timedelta(0)
    spec = ScheduleSpec(cron_expressions=list(crons),
                        intervals=[ScheduleIntervalSpec(parse_duration(e, "--every") or timedelta(0), off)
                                   for e in every],
                        time_zone_name=time_zone, jitter=parse_duration(jitter, "--jitter") or timedelta(0),
                        start_at=parse_time(start_at, "--start-at"), end_at=parse_time(end_at, "--end-at"))
    policy = SchedulePolicy(overlap=ScheduleOverlapPolicy(overlap),
                            catchup_window=parse_duration(catchup_window, "--catchup-window")
                            or DEFAULT_CATCHUP_WINDOW)

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        spec.check()  # the schedule's own mistakes first
        policy.check()
        runs_place = place(priority, fairness_key, fairness_weight)
        value = parse_json(input_, "--input")
        where = await client.start_target(workflow_type, queue)
        schema = where.input_schema
        if schema is not None:
            args = _args_for(value, int(schema.get("maxItems", 1)), input_ is not None)
        else:
            args = [value] if input_ is not None else []
        if where.warning is not None:
            click.echo(f"warning: {where.warning}", err=True)
        action = ScheduleActionStartWorkflow(workflow_type, *args, id=workflow_id, queue=where.queue,
                                             priority=runs_place, concurrency_key=concurrency_key)
        handle = await client.create_schedule(schedule_id, Schedule(action=action, spec=spec, policy=policy,
                                                                    state=ScheduleState(note=note, paused=paused)))
        return (await handle.describe()).to_json()

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
    else:
        nxt = out["info"]["next_action_times"]
        click.echo(f"created schedule {schedule_id}" + (f"; next action at {nxt[0]}" if nxt else ""))


@schedule_group.command("list")
@json_option
@click.pass_obj
def list_cmd(settings: Settings, as_json: bool) -> None:
    """List the schedules."""

    @with_client
    async def go(client: Client) -> list[dict[str, Any]]:
        return [s.to_json() for s in await client.list_schedules()]

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
        return
    rows = [[s["id"], s["workflow_type"], "paused" if s["paused"] else "active",
             s["next_action_time"] or "-", s["note"]] for s in out]
    click.echo(table(rows, ["ID", "WORKFLOW", "STATE", "NEXT ACTION", "NOTE"]))


@schedule_group.command("describe")
@click.argument("schedule_id")
@json_option
@click.pass_obj
def describe_cmd(settings: Settings, schedule_id: str, as_json: bool) -> None:
    """Show a schedule: spec, policy, state, recent actions, open runs, next action times."""

    @with_client
    async def go(client: Client) -> dict[str, Any]:
        return (await client.get_schedule_handle(schedule_id).describe()).to_json()

    out = run(go(settings))
    if as_json:
        click.echo(to_json(out))
        return
    spec, info, action = out["spec"], out["info"], out["action"]
    when_text = ", ".join([f"cron {c!r}" for c in spec["cron_expressions"]]
                          + [f"every {i['every']:g}s" for i in spec["intervals"]])
    click.echo(f"schedule {out['id']}: {action['workflow']} on queue {action['queue']}, {when_text} "
               f"({spec['time_zone_name']})")
    click.echo(f"state: {'paused' if out['state']['paused'] else 'active'}"
               + (f" — {out['state']['note']}" if out["state"]["note"] else ""))
    click.echo(f"overlap: {out['policy']['overlap']}; catch-up window: {out['policy']['catchup_window']:g}s")
    if action["priority"] or action["concurrency_key"]:
        p = action["priority"] or {}
        level = priority_text(p.get("priority_key"), p.get("fairness_key"), p.get("fairness_weight"))
        click.echo(f"runs' priority: {level}"
                   + (f"; concurrency key {action['concurrency_key']}" if action["concurrency_key"] else ""))
    click.echo(f"actions: {info['num_actions']} started, {info['num_actions_skipped_overlap']} skipped, "
               f"{info['num_actions_buffered']} buffered, {info['num_actions_missed_catchup_window']} missed")
    for r in info["running_actions"]:
        click.echo(f"running: {r['workflow_id']} (run {r['run_id']})")
    if info["recent_actions"]:
        click.echo(table([[a["scheduled_at"], a["kind"], a["status"], a["workflow_id"], a["run_status"] or "-"]
                          for a in info["recent_actions"]], ["SLOT", "KIND", "ACTION", "WORKFLOW ID", "RUN"]))
    for t in info["next_action_times"]:
        click.echo(f"next: {t}")


def _simple(name: str, doc: str, verb: str, with_note: bool = False) -> None:
    """A command that acts on one schedule and prints what it did."""

    @click.argument("schedule_id")
    @json_option
    @click.pass_obj
    def cmd(settings: Settings, schedule_id: str, as_json: bool, note: str | None = None) -> None:
        @with_client
        async def go(client: Client) -> None:
            handle = client.get_schedule_handle(schedule_id)
            if name == "pause":
                await handle.pause(note)
            elif name == "unpause":
                await handle.unpause(note)
            elif name == "trigger":
                await handle.trigger()
            else:
                await handle.delete()

        run(go(settings))
        click.echo(to_json({"schedule_id": schedule_id, "done": name}) if as_json else f"{verb} {schedule_id}")

    cmd.__doc__ = doc
    if with_note:
        cmd = click.option("--note", default=None, help="Why (shown by describe).")(cmd)
    schedule_group.command(name)(cmd)


_simple("pause", "Pause a schedule: no slot is acted on until unpaused.", "paused", with_note=True)
_simple("unpause", "Unpause a schedule: slots from now on are acted on.", "unpaused", with_note=True)
_simple("trigger", "Act on a schedule now (with its overlap policy).", "triggered")
_simple("delete", "Delete a schedule (its runs stay).", "deleted")


@schedule_group.command("backfill")
@click.argument("schedule_id")
@click.option("--start-at", required=True, help="The range's first time (ISO 8601).")
@click.option("--end-at", required=True, help="The range's last time (ISO 8601).")
@click.option("--overlap", type=click.Choice(OVERLAPS), default=None,
              help="The backfill's overlap policy (default: the schedule's).")
@json_option
@click.pass_obj
def backfill_cmd(settings: Settings, schedule_id: str, start_at: str, end_at: str, overlap: str | None,
                 as_json: bool) -> None:
    """Act on the schedule's slots between --start-at and --end-at as if they had come."""
    start = parse_time(start_at, "--start-at") or datetime.now(UTC)  # required: never None
    end = parse_time(end_at, "--end-at") or start

    @with_client
    async def go(client: Client) -> int:
        handle = client.get_schedule_handle(schedule_id)
        before = (await handle.describe()).info
        await handle.backfill(ScheduleBackfill(start_at=start, end_at=end,
                                               overlap=ScheduleOverlapPolicy(overlap) if overlap else None))
        after = (await handle.describe()).info
        return (after.num_actions + after.num_actions_skipped_overlap + after.num_actions_buffered
                - before.num_actions - before.num_actions_skipped_overlap - before.num_actions_buffered)

    acted = run(go(settings))
    if as_json:
        click.echo(to_json({"schedule_id": schedule_id, "slots_acted_on": acted}))
    else:
        click.echo(f"backfilled {schedule_id}: {acted} slot(s) acted on (from {when(start)} to {when(end)})")
