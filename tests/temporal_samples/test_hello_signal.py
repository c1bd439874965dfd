"""samples-python hello/hello_signal.py, ported: three greetings through the async signal
handler's queue, then exit."""

from __future__ import annotations

from support import events

from . import hello_signal


async def test_hello_signal_prints_what_the_sample_prints(db_url, sql, capsys):
    await hello_signal.main(db_url)
    assert capsys.readouterr().out.splitlines() == ["Result: ['Hello, user1', 'Hello, user2', 'Hello, user3']"]
    (run_id,) = sql("SELECT run_id FROM cairn.runs WHERE workflow_id = 'hello-signal-workflow-id'")[0]
    signals = [(d["name"], d.get("args", d.get("payload"))) for _, t, d in events(sql, str(run_id))
               if t == "SignalReceived"]
    assert [name for name, _ in signals] == ["submit_greeting"] * 3 + ["exit"]
