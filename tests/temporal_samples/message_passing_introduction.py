"""Port of samples-python message_passing/introduction/ (__init__.py, activities.py,
workflows.py, worker.py, starter.py) in one module.

The workflow class (a query, a signal, two updates, one with a validator, one running an
activity under an ``asyncio.Lock``), the activity and the logic are the sample's. The API
changes: imports from ``cairn`` (no ``workflow.unsafe.imports_passed_through()``: Cairn
does not sandbox workflow code); ``typing.List`` / ``Optional`` are spelled ``list`` /
``X | None``; ``Client.connect()`` reads ``CAIRN_DATABASE_URL`` (the sample's
``ClientConfig`` and host go); ``Worker`` takes a database URL and ``queues`` instead of
the client and ``task_queue``; the worker's ``main`` takes the URL and the event it waits
on (the sample's is a module global set by ctrl+c); ``client.start_workflow(...,
task_queue=)`` is ``client.start(..., queue=)``.
"""

# The sample's code is kept as written, so some of the linter's rewrites are not made:
# ruff: noqa: RET505, RUF001

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from cairn import ApplicationError, Client, Worker, WorkflowUpdateStage, activity, workflow

# __init__.py
TASK_QUEUE = "message-passing-introduction-task-queue"


class Language(IntEnum):
    ARABIC = 1
    CHINESE = 2
    ENGLISH = 3
    FRENCH = 4
    HINDI = 5
    PORTUGUESE = 6
    SPANISH = 7


# activities.py
@activity.defn
async def call_greeting_service(to_language: Language) -> str | None:
    """
    An Activity that simulates a call to a remote greeting service.
    The remote greeting service supports the full range of languages.
    """
    greetings = {
        Language.ARABIC: "مرحبا بالعالم",
        Language.CHINESE: "你好，世界",
        Language.ENGLISH: "Hello, world",
        Language.FRENCH: "Bonjour, monde",
        Language.HINDI: "नमस्ते दुनिया",
        Language.PORTUGUESE: "Olá mundo",
        Language.SPANISH: "Hola mundo",
    }
    await asyncio.sleep(0.2)  # Simulate a network call
    return greetings.get(to_language)


# workflows.py
@dataclass
class GetLanguagesInput:
    include_unsupported: bool


@dataclass
class SetLanguageInput:
    language: Language


@dataclass
class ApproveInput:
    name: str


@workflow.defn
class GreetingWorkflow:
    """
    A workflow that that returns a greeting in one of multiple supported
    languages.

    It exposes a query to obtain the current language, a signal to approve the
    workflow so that it is allowed to return its result, and two updates for
    changing the current language and receiving the previous language in
    response.

    One of the update handlers is not an `async def`, so it can only mutate and
    return local workflow state; the other update handler is `async def` and
    executes an activity which calls a remote service, giving access to language
    translations which are not available in local workflow state.
    """

    def __init__(self) -> None:
        self.approved_for_release = False
        self.approver_name: str | None = None
        self.greetings = {
            Language.CHINESE: "你好，世界",
            Language.ENGLISH: "Hello, world",
        }
        self.language = Language.ENGLISH
        self.lock = asyncio.Lock()  # used by the async handler below

    @workflow.run
    async def run(self) -> str:
        # 👉 In addition to waiting for the `approve` Signal, we also wait for
        # all handlers to finish. Otherwise, the Workflow might return its
        # result while an async set_language_using_activity Update is in
        # progress.
        await workflow.wait_condition(
            lambda: self.approved_for_release and workflow.all_handlers_finished()
        )
        return self.greetings[self.language]

    @workflow.query
    def get_languages(self, input: GetLanguagesInput) -> list[Language]:
        # 👉 A Query handler returns a value: it can inspect but must not mutate the Workflow state.
        if input.include_unsupported:
            return sorted(Language)
        else:
            return sorted(self.greetings)

    @workflow.signal
    def approve(self, input: ApproveInput) -> None:
        # 👉 A Signal handler mutates the Workflow state but cannot return a value.
        self.approved_for_release = True
        self.approver_name = input.name

    @workflow.update
    def set_language(self, input: SetLanguageInput) -> Language:
        # 👉 An Update handler can mutate the Workflow state and return a value.
        previous_language, self.language = self.language, input.language
        return previous_language

    @set_language.validator
    def validate_language(self, input: SetLanguageInput) -> None:
        if input.language not in self.greetings:
            # 👉 In an Update validator you raise any exception to reject the Update.
            raise ValueError(f"{input.language.name} is not supported")

    @workflow.update
    async def set_language_using_activity(self, input: SetLanguageInput) -> Language:
        # 👉 This update handler is async, so it can execute an activity.
        if input.language not in self.greetings:
            # 👉 We use a lock so that, if this handler is executed multiple
            # times, each execution can schedule the activity only when the
            # previously scheduled activity has completed. This ensures that
            # multiple calls to set_language are processed in order.
            async with self.lock:
                greeting = await workflow.execute_activity(
                    call_greeting_service,
                    input.language,
                    start_to_close_timeout=timedelta(seconds=10),
                )
                # 👉 The requested language might not be supported by the remote
                # service. If so, we raise ApplicationError, which will fail the
                # Update. The WorkflowExecutionUpdateAccepted event will still
                # be added to history. (Update validators can be used to reject
                # updates before any event is written to history, but they
                # cannot be async, and so we cannot use an update validator for
                # this purpose.)
                if greeting is None:
                    raise ApplicationError(
                        f"Greeting service does not support {input.language.name}"
                    )
                self.greetings[input.language] = greeting
        previous_language, self.language = self.language, input.language
        return previous_language

    @workflow.query
    def get_language(self) -> Language:
        return self.language


# worker.py
async def worker_main(url: str | None, interrupt_event: asyncio.Event) -> None:
    logging.basicConfig(level=logging.INFO)

    async with Worker(
        url,
        queues=[TASK_QUEUE],
        workflows=[GreetingWorkflow],
        activities=[call_greeting_service],
    ):
        logging.info("Worker started, ctrl+c to exit")
        await interrupt_event.wait()
        logging.info("Shutting down")


# starter.py
async def main(client: Client | None = None) -> None:
    if not client:
        client = await Client.connect()

    wf_handle = await client.start(
        GreetingWorkflow.run,
        id="greeting-workflow-1234",
        queue=TASK_QUEUE,
    )

    # 👉 Send a Query
    supported_languages = await wf_handle.query(
        GreetingWorkflow.get_languages, GetLanguagesInput(include_unsupported=False)
    )
    print(f"supported languages: {supported_languages}")

    # 👉 Execute an Update
    previous_language = await wf_handle.execute_update(
        GreetingWorkflow.set_language, SetLanguageInput(language=Language.CHINESE)
    )
    assert await wf_handle.query(GreetingWorkflow.get_language) == Language.CHINESE
    print(f"language changed: {previous_language.name} -> {Language.CHINESE.name}")

    # 👉 Start an Update and then wait for it to complete
    update_handle = await wf_handle.start_update(
        GreetingWorkflow.set_language_using_activity,
        SetLanguageInput(language=Language.ARABIC),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    previous_language = await update_handle.result()
    assert await wf_handle.query(GreetingWorkflow.get_language) == Language.ARABIC
    print(f"language changed: {previous_language.name} -> {Language.ARABIC.name}")

    # 👉 Send a Signal
    await wf_handle.signal(GreetingWorkflow.approve, ApproveInput(name=""))
    print(await wf_handle.result())
