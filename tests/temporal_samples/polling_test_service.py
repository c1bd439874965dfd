"""Port of samples-python polling/test_service.py, the fake service the polling samples poll:
down for four calls per workflow id, then up.

API change only: Cairn's ``ApplicationError`` has no ``category`` (Temporal's ``BENIGN``
lowers the log level of the failure and skips its metrics); the error is raised without it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cairn import ApplicationError, activity

attempts = Counter[str | None]()
ERROR_ATTEMPTS = 5


@dataclass
class ComposeGreetingInput:
    greeting: str
    name: str


async def get_service_result(input: ComposeGreetingInput) -> str:
    workflow_id = activity.info().workflow_id
    attempts[workflow_id] += 1

    print(f"Attempt {attempts[workflow_id]} of {ERROR_ATTEMPTS} to invoke service")
    if attempts[workflow_id] == ERROR_ATTEMPTS:
        return f"{input.greeting}, {input.name}!"
    raise ApplicationError(
        message="service is down",
    )
