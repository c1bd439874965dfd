"""Task tokens of asynchronous activity completion: opaque, signed, carrying the attempt's
fencing token; and the retry decision a failure by token shares with the worker."""

from __future__ import annotations

import random
import uuid

import pytest

from cairn import activity
from cairn.activity import CompleteAsync, make_task_token, parse_task_token, retry_decision
from cairn.errors import InputValidationError

KEY = "k" * 64
RUN = str(uuid.uuid4())


def test_a_token_names_the_attempt_and_verifies_under_its_key():
    token = make_task_token(KEY, RUN, 7, 12345678901)
    assert token.startswith("cairn1.")
    assert RUN not in token  # opaque
    assert KEY not in token  # the key never leaves the database
    parsed = parse_task_token(token)
    assert (parsed.run_id, parsed.seq, parsed.token) == (RUN, 7, 12345678901)
    assert parsed.signed_with(KEY)
    assert not parsed.signed_with("another key")


def test_each_attempt_has_its_own_token():
    assert make_task_token(KEY, RUN, 7, 1) != make_task_token(KEY, RUN, 7, 2)
    assert make_task_token(KEY, RUN, 7, 1) != make_task_token(KEY, RUN, 8, 1)


def test_a_token_pointed_at_another_attempt_fails_its_signature():
    token = make_task_token(KEY, RUN, 7, 1)
    other = make_task_token(KEY, RUN, 7, 2)
    # The body of one attempt with the MAC of another.
    spliced = parse_task_token(token)._replace(mac=parse_task_token(other).mac)
    assert not spliced.signed_with(KEY)


@pytest.mark.parametrize("bad", ["", "cairn1.", "cairn1.@@@", "cairn2.AAAA", "x" * 80, "cairn1.AAAA"])
def test_malformed_tokens_are_bad_input(bad):
    with pytest.raises(InputValidationError, match="task token"):
        parse_task_token(bad)


def test_a_truncated_token_is_bad_input():
    with pytest.raises(InputValidationError, match="damaged or truncated"):
        parse_task_token(make_task_token(KEY, RUN, 1, 1)[:-4])


def test_raise_complete_async_is_not_an_exception():
    with pytest.raises(CompleteAsync):
        activity.raise_complete_async()
    assert not issubclass(CompleteAsync, Exception)  # `except Exception` cannot swallow it


def test_retry_decision():
    options = {"retry_policy": {"initial_interval": 1.0, "backoff_coefficient": 2.0, "maximum_attempts": 3,
                                "jitter": 0.0}}
    rng = random.Random(1)
    failure = {"type": "Boom", "message": "x"}
    assert retry_decision(options, 1, failure, False, rng)[0] == pytest.approx(1.0)
    assert retry_decision(options, 3, failure, False, rng) == (None, "maximum_attempts")
    assert retry_decision(options, 1, failure, True, rng) == (None, "non_retryable")
    assert retry_decision(options, 1, {"type": "ScheduleToCloseTimeout"}, False, rng) == (
        None, "schedule_to_close_timeout")
