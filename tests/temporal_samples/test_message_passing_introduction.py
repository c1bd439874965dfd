"""samples-python message_passing/introduction, ported: the worker runs; the starter
queries the supported languages, changes the language by an update, then by an update
that calls the greeting service, approves by a signal, and prints the greeting."""

from __future__ import annotations

import asyncio

import pytest

from cairn import WorkflowUpdateFailedError
from support import events

from . import message_passing_introduction as sample

Language = sample.Language


async def test_introduction_prints_what_the_sample_prints(db_url, client, sql, capsys):
    interrupt = asyncio.Event()
    worker = asyncio.create_task(sample.worker_main(db_url, interrupt))
    try:
        await sample.main(client)
    finally:
        interrupt.set()
        await worker
    assert capsys.readouterr().out.splitlines() == [
        "supported languages: [<Language.CHINESE: 2>, <Language.ENGLISH: 3>]",
        "language changed: ENGLISH -> CHINESE",
        "language changed: CHINESE -> ARABIC",
        "مرحبا بالعالم",
    ]
    [(run_id,)] = sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'greeting-workflow-1234'")
    history = events(sql, run_id)
    assert [d["name"] for _, t, d in history if t == "UpdateAccepted"] == ["set_language",
                                                                           "set_language_using_activity"]
    assert [d.get("result") for _, t, d in history if t == "UpdateCompleted"] == [Language.ENGLISH, Language.CHINESE]
    assert [d["activity_type"] for _, t, d in history if t == "ActivityScheduled"] == ["call_greeting_service"]


async def test_the_validator_rejects_an_unsupported_language_before_anything_is_written(
        client, start_worker, sql):
    """Not in the sample's starter, but what its validator is for."""
    await start_worker(workflows=[sample.GreetingWorkflow], activities=[sample.call_greeting_service],
                       queues=[sample.TASK_QUEUE])
    handle = await client.start(sample.GreetingWorkflow.run, id="greeting-workflow-1234", queue=sample.TASK_QUEUE)
    with pytest.raises(WorkflowUpdateFailedError, match="FRENCH is not supported"):
        await handle.execute_update(sample.GreetingWorkflow.set_language,
                                    sample.SetLanguageInput(language=Language.FRENCH))
    assert await handle.query(sample.GreetingWorkflow.get_language) is Language.ENGLISH
    [(run_id,)] = sql("SELECT run_id::text FROM cairn.runs WHERE workflow_id = 'greeting-workflow-1234'")
    assert "UpdateAccepted" not in [t for _, t, _ in events(sql, run_id)]
