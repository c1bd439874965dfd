"""The client's checks of what it is given, before anything is written, and how long its
reads keep trying."""

from __future__ import annotations

import uuid
from typing import Any

from cairn.errors import InputValidationError
from cairn.options import check_identifier, check_queue

# A read that loses its connection (a restart, a failover, a terminated session) runs again
# on a fresh one for up to READ_RETRY_SECONDS; result() keeps trying for as long as it was
# asked to wait.
READ_RETRY_SECONDS = 30.0


def validate_id(workflow_id: str) -> str:
    return check_identifier(workflow_id, "the workflow id")


def validate_run_id(run_id: str) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise InputValidationError(f"{run_id!r} is not a run id (run ids are UUIDs)") from None


def validate_queue(queue: str) -> str:
    return check_queue(queue)


def lookup_id(workflow_id: str) -> str:
    """A workflow id to look up (see ``check_identifier``'s ``lookup``)."""
    return check_identifier(workflow_id, "the workflow id", lookup=True)


def lookup_type(name: str) -> str:
    """A workflow type name to look up."""
    return check_identifier(name, "the workflow type", lookup=True)


def check_input(name: str, input_schema: dict[str, Any], payload: list[Any]) -> None:
    """Validates a start's arguments against a registered input schema (every error, not
    only the first)."""
    import jsonschema  # here: ~40 ms at import, needed only for starts by type name

    validator = jsonschema.validators.validator_for(input_schema)(input_schema)
    problems = []
    for exc in sorted(validator.iter_errors(payload), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(p) for p in exc.absolute_path)
        problems.append(f"{'at ' + where + ': ' if where else ''}{exc.message}")
    if problems:
        raise InputValidationError(f"input for workflow {name!r} is invalid: {'; '.join(problems)}")
