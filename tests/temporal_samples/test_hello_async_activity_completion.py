"""The port of Temporal's hello_async_activity_completion prints what the sample prints."""

from __future__ import annotations

import hello_async_activity_completion as sample


async def test_hello_async_activity_completion(db_url, monkeypatch, capsys):
    monkeypatch.setenv("CAIRN_DATABASE_URL", db_url)
    await sample.main()
    assert capsys.readouterr().out.splitlines() == [
        "Completing activity asynchronously",
        "Waiting one second...",
        "Waiting one second...",
        "Waiting one second...",
        "Result: Hello, World!",
    ]
