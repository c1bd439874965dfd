"""The ``cairn`` group imports a command's module when the command is looked up
(``cairn.cli._base.COMMAND_MODULES``): the table must name every command's modules, and a
command must not need a module the table does not name."""

from __future__ import annotations

import subprocess
import sys

import click

from cairn.cli import main
from cairn.cli._base import COMMAND_MODULES


def test_the_table_names_the_module_of_every_command():
    ctx = click.Context(main)
    names = main.list_commands(ctx)  # imports every module
    assert sorted(names) == sorted(COMMAND_MODULES)
    for name in names:
        command = main.get_command(ctx, name)
        assert command is not None, name
        modules = {f"cairn.cli.{m}" for m in COMMAND_MODULES[name]}
        defined = {command.callback.__module__} if command.callback else set()
        if isinstance(command, click.Group):
            defined |= {sub.callback.__module__ for sub in command.commands.values() if sub.callback}
        assert defined <= modules, (name, defined - modules)


def test_a_command_imports_only_its_own_modules():
    """In a fresh interpreter, `cairn list --help` imports neither the web view nor the
    other commands' modules."""
    probe = ("import sys; from cairn.cli import main\n"
             "try: main(['list', '--help'])\n"
             "except SystemExit: pass\n"
             "print(sorted(m for m in sys.modules if m.startswith(('cairn.cli.', 'aiohttp.web'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert "cairn.cli.ui" not in loaded, loaded
    assert "aiohttp.web" not in loaded, loaded
    assert "cairn.cli.runs" in loaded, loaded
