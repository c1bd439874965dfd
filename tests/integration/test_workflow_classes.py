"""Workflows as classes (``@workflow.defn class`` with ``@workflow.run``, ``signal``,
``query``, ``update``) and typed, multi-argument handlers in both forms, on real Postgres
with in-process workers: arguments typed by the annotations on the way in and the results
on the way out, checked by the client before anything is written when a handler is named by
its method; ``@workflow.init``; signals sent before the code started reach their handler
first; replay of a class-form history; activities as bound methods."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import timedelta
from enum import Enum

import pytest
from pydantic import BaseModel

from cairn import (
    ApplicationError,
    InputValidationError,
    NonDeterminismError,
    QueryFailed,
    WorkflowUpdateFailedError,
    activity,
    testing,
    workflow,
)
from cairn.errors import ConfigurationError
from cairn.sync import SyncClient
from support import events, types_of

from .test_messages_cli import cairn

T = 10


class Language(Enum):
    ENGLISH = "english"
    FRENCH = "french"
    CHINESE = "chinese"


@dataclasses.dataclass
class Greeting:
    salutation: str
    name: str


class Approval(BaseModel):
    by: str
    level: int


GREETINGS = {Language.ENGLISH: "Hello", Language.FRENCH: "Bonjour", Language.CHINESE: "你好"}


@activity.defn
async def compose(greeting: Greeting) -> str:
    return f"{greeting.salutation}, {greeting.name}!"


@workflow.defn
class GreetingWorkflow:
    """message_passing/introduction's shape: a signal with two typed arguments, queries with
    and without arguments, an update with a validator that returns an enum."""

    def __init__(self) -> None:
        self.language = Language.ENGLISH
        self.approved_by: list[str] = []
        self.notes: list[tuple[str, int]] = []
        self.done = False

    @workflow.run
    async def run(self, name: str) -> Greeting:
        await workflow.wait_condition(lambda: self.done)
        await workflow.wait_condition(workflow.all_handlers_finished)
        salutation = await workflow.execute_activity(compose, Greeting(GREETINGS[self.language], name),
                                                     start_to_close_timeout=T)
        return Greeting(salutation, ",".join(self.approved_by))

    @workflow.signal
    def approve(self, approval: Approval, note: str) -> None:
        self.approved_by.append(approval.by)
        self.notes.append((note, approval.level))

    @workflow.signal(name="finish")
    async def finish_now(self) -> None:
        await workflow.sleep(0.05)
        self.done = True

    @workflow.query
    def get_language(self) -> Language:
        return self.language

    @workflow.query
    def notes_above(self, level: int) -> list[str]:
        return [note for note, lvl in self.notes if lvl > level]

    @workflow.update
    def set_language(self, language: Language) -> Language:
        previous, self.language = self.language, language
        return previous

    @set_language.validator
    def check_language(self, language: Language) -> None:
        if language is Language.CHINESE and not self.approved_by:
            raise ApplicationError(f"{language.value} needs an approval first", type="NotApproved")


async def test_class_workflow_typed_signals_queries_updates(client, start_worker, sql):
    await start_worker(workflows=[GreetingWorkflow], activities=[compose])
    handle = await client.start(GreetingWorkflow.run, "World", id="cls-1")
    assert await handle.query(GreetingWorkflow.get_language) is Language.ENGLISH  # typed by the annotation
    assert await handle.execute_update(GreetingWorkflow.set_language, Language.FRENCH) is Language.ENGLISH
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(GreetingWorkflow.set_language, Language.CHINESE)
    assert info.value.rejected
    assert info.value.type == "NotApproved"
    await handle.signal(GreetingWorkflow.approve, Approval(by="ann", level=3), "first")
    await handle.signal("approve", {"by": "bob", "level": 1}, "second")  # by name: the worker types it
    assert await handle.query(GreetingWorkflow.notes_above, 2) == ["first"]
    assert await handle.query("notes_above", 0) == ["first", "second"]
    assert await handle.execute_update("set_language", "chinese") == "french"  # by name: raw JSON back
    await handle.signal(GreetingWorkflow.finish_now)
    result = await handle.result(timeout=T)
    assert result == Greeting("你好, World!", "ann,bob")
    got = [d for _, t, d in events(sql, handle.run_id) if t == "SignalReceived"]
    assert got[0] == {"name": "approve", "args": [{"by": "ann", "level": 3}, "first"]}
    assert got[-1] == {"name": "finish", "payload": None}


async def test_client_checks_method_arguments_before_writing(client, start_worker, sql):
    await start_worker(workflows=[GreetingWorkflow], activities=[compose])
    handle = await client.start(GreetingWorkflow, "World", id="cls-check")  # the class itself names it too
    await handle.query(GreetingWorkflow.get_language)
    before = types_of(sql, handle.run_id)
    with pytest.raises(InputValidationError, match="argument 'approval' is invalid"):
        await handle.signal(GreetingWorkflow.approve, {"by": "ann"}, "no level")
    with pytest.raises(InputValidationError, match="takes 2 argument"):
        await handle.signal(GreetingWorkflow.approve, Approval(by="ann", level=1))
    with pytest.raises(InputValidationError, match="argument 'language' is invalid"):
        await handle.execute_update(GreetingWorkflow.set_language, "klingon")
    with pytest.raises(InputValidationError, match="argument 'level' is invalid"):
        await handle.query(GreetingWorkflow.notes_above, "high")
    with pytest.raises(InputValidationError, match=r"not a @workflow\.signal method"):
        await handle.signal(GreetingWorkflow.get_language)
    with pytest.raises(InputValidationError, match="argument 'name' is invalid"):
        await client.start(GreetingWorkflow.run, ["not", "a", "name"], id="cls-bad")
    assert types_of(sql, handle.run_id) == before
    assert sql("SELECT count(*) FROM cairn.inbox") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.updates") == [(0,)]
    assert sql("SELECT count(*) FROM cairn.runs WHERE workflow_id = 'cls-bad'") == [(0,)]
    # A signal the handler cannot take, sent by name (no client-side check), is dropped
    # with a warning and the run goes on.
    await handle.signal("approve", {"by": "ann"}, "no level")
    await handle.signal(GreetingWorkflow.finish_now)
    assert (await handle.result(timeout=T)).name == ""


@workflow.defn(name="Accumulator")
class Accumulator:
    """@workflow.init: __init__ takes the run's arguments, so a signal that comes before the
    run method starts finds the state it needs; signals sent with the start reach their
    handler before the run method's first step (as in Temporal)."""

    @workflow.init
    def __init__(self, prefix: str, limit: int) -> None:
        self.items = [f"{prefix}:init"]
        self.limit = limit

    @workflow.run
    async def run(self, prefix: str, limit: int) -> list[str]:
        self.items.append(f"{prefix}:run")
        await workflow.wait_condition(lambda: len(self.items) >= self.limit)
        return self.items

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @workflow.query
    def get_items(self) -> list[str]:
        return self.items


async def test_init_and_signals_before_the_run_method(client, start_worker):
    await start_worker(workflows=[Accumulator])
    handle = await client.signal_with_start(Accumulator, "p", 4, id="acc", signal=Accumulator.add,
                                            signal_payload="early")
    # A query waits for the run's first workflow task: the signal that came with the start
    # went to its handler before the run method's first step.
    assert await handle.query(Accumulator.get_items) == ["p:init", "early", "p:run"]
    await handle.signal(Accumulator.add, "late")
    assert await handle.result(timeout=T) == ["p:init", "early", "p:run", "late"]


@workflow.defn
async def function_form(limit: int) -> list[object]:
    """Typed handlers in the function form: a signal with a dataclass and an int, a query
    with an argument, wait_signal of a multi-argument signal."""
    got: list[object] = []

    def on_greeting(greeting: Greeting, times: int) -> None:
        got.append(f"{greeting.salutation} {greeting.name} x{times}")

    def count_over(n: int) -> int:
        return sum(1 for g in got if isinstance(g, str) and int(g.rsplit("x", 1)[1]) > n)

    workflow.set_signal_handler("greet", on_greeting)
    workflow.set_query_handler("count_over", count_over)
    pair = await workflow.wait_signal("pair")
    got.append(list(pair))
    await workflow.wait_condition(lambda: len(got) >= limit)
    return got


async def test_typed_handlers_in_the_function_form(client, start_worker, caplog):
    await start_worker(workflows=[function_form])
    handle = await client.start(function_form, 3, id="fn-typed")
    await handle.signal("pair", 1, "two")
    await handle.signal("greet", {"salutation": "Hi", "name": "ann"}, 2)
    with caplog.at_level(logging.WARNING, logger="cairn.workflow"):
        await handle.signal("greet", {"salutation": "Hi"}, 2)  # no name: dropped
        await asyncio.sleep(0.3)
        assert await handle.query("count_over", 1) == 1
        with pytest.raises(QueryFailed) as info:
            await handle.query("count_over", "many")
        assert info.value.type == "InvalidArguments"
    assert any("signal 'greet' dropped" in r.getMessage() for r in caplog.records)
    await handle.signal("greet", {"salutation": "Yo", "name": "bob"}, 1)
    assert await handle.result(timeout=T) == [[1, "two"], "Hi ann x2", "Yo bob x1"]


def test_bad_workflow_classes_are_refused_at_definition():
    with pytest.raises(TypeError, match=r"exactly one @workflow\.run method"):
        @workflow.defn
        class NoRun:
            async def go(self) -> None: ...
    with pytest.raises(TypeError, match=r"exactly one @workflow\.run method"):
        @workflow.defn
        class TwoRuns:
            @workflow.run
            async def a(self) -> None: ...
            @workflow.run
            async def b(self) -> None: ...
    with pytest.raises(TypeError, match="both handle signal 'x'"):
        @workflow.defn
        class Twice:
            @workflow.run
            async def run(self) -> None: ...
            @workflow.signal(name="x")
            def one(self) -> None: ...
            @workflow.signal(name="x")
            def two(self) -> None: ...
    with pytest.raises(TypeError, match="plain"):
        class AsyncQuery:
            @workflow.query
            async def q(self) -> int: ...
    with pytest.raises(TypeError, match="async def"):
        class SyncRun:
            @workflow.run
            def run(self) -> None: ...
    with pytest.raises(TypeError, match="same parameters"):
        @workflow.defn
        class InitMismatch:
            @workflow.init
            def __init__(self, a: int) -> None: ...
            @workflow.run
            async def run(self, b: int) -> None: ...


class Inventory:
    """Activities as methods of an object that holds what they share (Temporal's
    hello_activity_method)."""

    def __init__(self, stock: dict[str, int]) -> None:
        self.stock = stock

    @activity.defn
    def reserve(self, item: str, count: int) -> int:
        self.stock[item] -= count
        return self.stock[item]


@workflow.defn
class Restock:
    @workflow.run
    async def run(self, item: str) -> list[int]:
        first = await workflow.execute_activity(Inventory.reserve, item, 1, start_to_close_timeout=timedelta(seconds=T))
        # Temporal's name for the same call.
        second = await workflow.execute_activity_method(Inventory.reserve, item, 1, start_to_close_timeout=T)
        return [first, second]


async def test_activity_methods_run_on_their_instance(client, start_worker):
    inventory = Inventory({"apples": 10})
    await start_worker(workflows=[Restock], activities=[inventory.reserve])
    assert await client.execute(Restock.run, "apples", id="restock") == [9, 8]
    assert inventory.stock == {"apples": 8}
    with pytest.raises(ConfigurationError, match="register it bound to an instance"):
        await start_worker(workflows=[Restock], activities=[Inventory.reserve])


async def test_class_history_replays_and_a_changed_class_is_caught(client, start_worker):
    await start_worker(workflows=[GreetingWorkflow], activities=[compose])
    handle = await client.start(GreetingWorkflow.run, "Replay", id="cls-replay")
    await handle.signal(GreetingWorkflow.approve, Approval(by="cy", level=5), "n")
    await handle.execute_update(GreetingWorkflow.set_language, Language.FRENCH)
    await handle.signal(GreetingWorkflow.finish_now)
    await handle.result(timeout=T)
    recorded = await handle.history()
    replayed = testing.replay_history([GreetingWorkflow], recorded)
    assert (replayed.workflow_type, replayed.events) == ("GreetingWorkflow", len(recorded))

    @workflow.defn(name="GreetingWorkflow")
    class Changed(GreetingWorkflow):  # the finish handler no longer sleeps: a timer less
        @workflow.signal(name="finish")
        async def finish_now(self) -> None:
            self.done = True

    with pytest.raises(NonDeterminismError):
        testing.replay_history([Changed], recorded)


async def test_sync_client_takes_methods(db_url, start_worker):
    await start_worker(workflows=[GreetingWorkflow], activities=[compose])

    def script() -> tuple[object, ...]:
        with SyncClient(db_url) as sync:
            handle = sync.start(GreetingWorkflow.run, "Sync", id="cls-sync")
            previous = handle.execute_update(GreetingWorkflow.set_language, Language.FRENCH)
            handle.signal(GreetingWorkflow.approve, Approval(by="di", level=1), "s")
            language = handle.query(GreetingWorkflow.get_language)
            handle.signal(GreetingWorkflow.finish_now)
            return previous, language, handle.result(timeout=T)

    assert await asyncio.to_thread(script) == (Language.ENGLISH, Language.FRENCH, Greeting("Bonjour, Sync!", "di"))


async def test_cli_sends_several_arguments(client, start_worker, db_url):
    await start_worker(workflows=[GreetingWorkflow], activities=[compose])
    handle = await client.start(GreetingWorkflow.run, "CLI", id="cls-cli")
    ran = await cairn(db_url, "signal", "cls-cli", "approve", "--input", '{"by": "ed", "level": 4}',
                      "--input", '"from the shell"')
    assert ran.exit_code == 0, ran.stderr
    ran = await cairn(db_url, "query", "cls-cli", "notes_above", "--input", "3")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == ["from the shell"]
    ran = await cairn(db_url, "update", "cls-cli", "set_language", "--input", '"french"')
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout) == "english"
    await handle.signal(GreetingWorkflow.finish_now)
    assert await handle.result(timeout=T) == Greeting("Bonjour, CLI!", "ed")
