"""Every CLI command that connects refuses a URL libpq cannot parse with one line, exit 2,
and the password masked (issue 15, A4: ``cairn verify`` printed a traceback echoing it)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cairn import workflow
from cairn.cli import main as cli

PASSWORD = "hunter2Zq"
MALFORMED = {
    "percent_encoding": f"postgresql://u:{PASSWORD}%zz@h/db",
    "ipv6_typo": f"postgresql://u:{PASSWORD}@[::1/db",
}


@workflow.defn
async def dsn_probe() -> None:
    """A workflow, so that `worker -m` and `replay -m` get as far as connecting."""


# Each command that takes a DSN, with the arguments it needs to reach the connection.
COMMANDS: dict[str, list[str]] = {
    "start": ["start", "dsn_probe"],
    "list": ["list"],
    "describe": ["describe", "x"],
    "history": ["history", "x"],
    "history --follow": ["history", "--follow", "x"],
    "replay": ["replay", "x", "-m", __name__],
    "signal": ["signal", "x", "go"],
    "query": ["query", "x", "q"],
    "update": ["update", "x", "u"],
    "cancel": ["cancel", "x"],
    "terminate": ["terminate", "x"],
    "reset": ["reset", "x", "--to-seq", "1"],
    "retry": ["retry", "x"],
    "activity complete": ["activity", "complete", "x"],
    "activity fail": ["activity", "fail", "x"],
    "activity heartbeat": ["activity", "heartbeat", "x"],
    "schedule create": ["schedule", "create", "s", "dsn_probe", "--every", "1h"],
    "schedule list": ["schedule", "list"],
    **{f"schedule {verb}": ["schedule", verb, "s"] for verb in ("describe", "pause", "unpause", "trigger", "delete")},
    "schedule backfill": ["schedule", "backfill", "s", "--start-at", "2026-01-01T00:00:00Z",
                          "--end-at", "2026-01-01T01:00:00Z"],
    "batch list": ["batch", "list"],
    "workers": ["workers"],
    "pause": ["pause", "x"],
    "unpause": ["unpause", "x"],
    "pauses": ["pauses"],
    "purge": ["purge", "--dry-run"],
    "namespace update": ["namespace", "update", "--retention", "30d"],
    "namespace describe": ["namespace", "describe"],
    "namespace list": ["namespace", "list"],
    "limits set": ["limits", "set", "k", "2"],
    "limits list": ["limits", "list"],
    "limits delete": ["limits", "delete", "k"],
    "archive show": ["archive", "show", "x"],
    "activity pause": ["activity", "pause", "x", "1"],
    "activity unpause": ["activity", "unpause", "x", "1"],
    **{f"batch {verb}": ["batch", verb, "0190f0f0-0000-7000-8000-000000000000"]
       for verb in ("describe", "cancel", "wait")},
    "terminate --where": ["terminate", "--where", "Status = 'running'", "--dry-run"],
    "verify": ["verify"],
    "worker": ["worker", "-m", __name__],
    "ui": ["ui", "--port", "0"],
    "db migrate": ["db", "migrate"],
    "db status": ["db", "status"],
    "db payloads": ["db", "payloads"],
    "db roles": ["db", "roles"],
    "breakers": ["breakers"],
    **{f"breakers {verb}": ["breakers", verb, "n"] for verb in ("open", "close", "reset", "disable", "enable")},
}
NO_DATABASE = {"fake-llm"}  # serves a fake provider; takes no DSN


def leaf_commands(group: click.Group, prefix: str = "") -> set[str]:
    out = set()
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the top group imports its commands' modules here
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            out |= leaf_commands(command, f"{prefix}{name} ")
        if not isinstance(command, click.Group) or command.invoke_without_command:
            out.add(f"{prefix}{name}")
    return out


def test_every_command_is_covered():
    assert leaf_commands(cli) - NO_DATABASE <= set(COMMANDS)


@pytest.mark.parametrize("given", ["option", "env"])
@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
@pytest.mark.parametrize("args", COMMANDS.values(), ids=COMMANDS.keys())
def test_malformed_dsn_is_one_masked_line(args, url, given):
    if given == "option":
        ran = CliRunner().invoke(cli, ["--database-url", url, *args])
    else:
        ran = CliRunner(env={"CAIRN_DATABASE_URL": url}).invoke(cli, args)
    assert ran.exception is None or isinstance(ran.exception, SystemExit), repr(ran.exception)
    assert ran.exit_code == 2, (ran.exit_code, ran.stderr)
    assert ran.stderr.startswith("error: invalid database URL "), ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr
    assert PASSWORD not in ran.stdout + ran.stderr
