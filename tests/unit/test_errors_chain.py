"""A recorded failure becomes Temporal's cause chain (WorkflowFailure.from_failure)."""

from __future__ import annotations

from cairn.errors import ApplicationError, WorkflowFailure


def test_a_recorded_child_failure_of_an_activity_failure_chains_three_deep():
    recorded = {
        "type": "ChildWorkflowError", "message": "child failed", "stack": "parent stack",
        "details": {"type": "ActivityError", "message": "activity failed", "stack": "child stack",
                    "details": {"type": "ValueError", "message": "bad", "details": {"n": 1},
                                "stack": "activity stack", "non_retryable": True}},
    }
    err = WorkflowFailure.from_failure(recorded)
    assert (err.type, err.message, err.stack) == ("ChildWorkflowError", "child failed", "parent stack")
    activity = err.cause
    assert activity is err.__cause__
    assert isinstance(activity, ApplicationError)
    assert (activity.type, activity.stack) == ("ActivityError", "child stack")
    root = activity.cause
    assert isinstance(root, ApplicationError)
    assert (root.type, root.message, root.details, root.stack, root.non_retryable) == (
        "ValueError", "bad", {"n": 1}, "activity stack", True)
    assert root.cause is None
    assert root.to_failure() == {"type": "ValueError", "message": "bad", "details": {"n": 1}, "stack": "activity stack"}


def test_a_plain_failure_has_no_cause_and_its_form_is_unchanged():
    err = WorkflowFailure.from_failure({"type": "KeyError", "message": "'x'", "details": None})
    assert err.cause is None
    assert err.to_failure() == {"type": "KeyError", "message": "'x'", "details": None}
    # details that merely look like a failure are not a cause unless the type says so
    assert WorkflowFailure.from_failure({"type": "E", "message": "m",
                                         "details": {"type": "T", "message": "x"}}).cause is None
