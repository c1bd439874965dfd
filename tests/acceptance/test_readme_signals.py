"""The README's "Signals, wait conditions and queries" typed in as written (the blocks marked
``signals``): signals, a query and signal-with-start from Python, then the CLI's signal and
query, against a fresh database."""

from __future__ import annotations

import ast
import json

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_signals_example_works_as_typed(tmp_path, db_url, sql):
    ran = run_readme("signals", tmp_path, db_url, TIMEOUT * 2)
    printed = [ast.literal_eval(line) for line in ran.stdout.splitlines() if line.startswith("{'")]
    # The query saw both signals sent before it; signal-with-start reached the open run,
    # whose second approval ended it.
    assert printed == [{"approvals": ["ann"], "comments": ["looks good"]},
                       {"approvals": ["ann", "bob"], "comments": ["looks good"]}]
    assert sql("SELECT count(*), min(status) FROM cairn.runs WHERE workflow_id = 'approve-spec'") == [
        (1, "completed")]
    # The CLI's query, after the CLI's two signals.
    answer = ran.stdout[ran.stdout.rindex("{"):]
    assert json.loads(answer) == {"approvals": ["ann"], "comments": ["typo on line 3"]}
