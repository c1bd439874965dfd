"""``cairn verify``: check every invariant over the database and list the violations.

Exit 0 when nothing is broken, 1 when something is (each violation listed), 2 on bad
input (a missing acknowledgement log or log file, a module that does not import, an unset
canary variable, an effects table that does not exist).
"""

from __future__ import annotations

import os

import click

from cairn.cli._base import EXIT_RUNTIME, Settings, fail, import_modules, main, run, to_json
from cairn.errors import InputValidationError
from cairn.store.db import resolve_url
from cairn.verify import Report, verify
from cairn.worker import collect


@main.command("verify")
@click.option("--acks", type=click.Path(dir_okay=False), default=None,
              help="The acknowledgement log (JSONL) of what clients were told about their starts.")
@click.option("-m", "--module", "modules", multiple=True,
              help="Module with the current workflow code: its runs are replayed (repeatable).")
@click.option("--effects-table", default=None, metavar="SCHEMA.TABLE",
              help="The effects sink to compare with completed activities (e.g. chaos.effects).")
@click.option("--effect-kind", "effect_kinds", multiple=True,
              help="Activity type that writes effects (default: the kinds found in the sink).")
@click.option("--canary-env", "canary_envs", multiple=True, metavar="NAME",
              help="Environment variable holding a secret that must appear nowhere (repeatable).")
@click.option("--log", "log_files", multiple=True, type=click.Path(dir_okay=False),
              help="Worker log file to scan for canaries (repeatable).")
@click.option("--settle", type=float, default=0.0, show_default=True, metavar="SECONDS",
              help="Wait this long for runs to close and task tables to drain.")
@click.option("--expect-reexecution", is_flag=True, help="Require that some activity ran a second attempt.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def verify_cmd(settings: Settings, acks: str | None, modules: tuple[str, ...], effects_table: str | None,
               effect_kinds: tuple[str, ...], canary_envs: tuple[str, ...], log_files: tuple[str, ...],
               settle: float, expect_reexecution: bool, as_json: bool) -> None:
    """Check the engine's invariants over every run and list each violation."""
    if settle < 0:
        raise fail("--settle must be >= 0")
    canaries = []
    for name in canary_envs:
        value = os.environ.get(name)
        if not value:
            raise fail(f"canary variable {name} is not set (or empty)")
        canaries.append(value)

    async def go() -> Report:
        workflows = [fn for mod in import_modules(modules) for fn in collect(mod)[0]]
        if modules and not workflows:
            raise InputValidationError(f"no workflows in {', '.join(modules)}")
        url, _ = resolve_url(settings.database_url)
        return await verify(url, acks=acks, workflows=workflows, effects_table=effects_table, canaries=canaries,
                            log_files=log_files, settle_timeout=settle, expect_reexecution=expect_reexecution,
                            effect_kinds=effect_kinds or None)

    report = run(go())
    if as_json:
        click.echo(to_json(report.to_json()))
    else:
        for v in report.violations:
            where = " ".join(x for x in (v.workflow_id and f"workflow {v.workflow_id}",
                                         v.run_id and f"run {v.run_id}") if x)
            click.echo(f"{v.invariant}: {where + ': ' if where else ''}{v.detail}")
        replayed = report.stats.get("replay", {})
        verdict = "OK" if report.ok() else f"{len(report.violations)} violation(s)"
        click.echo(f"{verdict}: {report.checked_runs} runs checked, {replayed.get('replayed', 0)} replayed, "
                   f"{replayed.get('skipped', 0)} not replayed (no code given)")
    if not report.ok():
        raise click.exceptions.Exit(EXIT_RUNTIME)
