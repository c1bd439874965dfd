"""RetryPolicy.next_delay: backoff, cap, attempts, non-retryable errors, jitter, validation."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from pydantic import ValidationError

from cairn import RetryPolicy
from cairn.options import DEFAULT_RETRY_POLICY


def exact(**kwargs: object) -> RetryPolicy:
    return RetryPolicy(jitter=0.0, **kwargs)  # type: ignore[arg-type]


def test_default_policy():
    p = DEFAULT_RETRY_POLICY
    assert p.initial_interval == timedelta(seconds=1)
    assert p.backoff_coefficient == 2.0
    assert p.maximum_interval is None
    assert p.maximum_attempts == 0
    assert p.jitter == 0.1
    assert p.non_retryable_error_types == ()


def test_backoff_grows_geometrically_from_the_initial_interval():
    p = exact(initial_interval=timedelta(milliseconds=500), backoff_coefficient=3.0)
    assert [p.next_delay(n, "E") for n in range(1, 5)] == [0.5, 1.5, 4.5, 13.5]


def test_coefficient_one_is_a_constant_delay():
    p = exact(initial_interval=timedelta(seconds=2), backoff_coefficient=1.0)
    assert {p.next_delay(n, "E") for n in range(1, 50)} == {2.0}


def test_delay_is_capped_at_maximum_interval():
    p = exact(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5))
    assert [p.next_delay(n, "E") for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_default_cap_is_a_hundred_initial_intervals():
    p = exact(initial_interval=timedelta(seconds=3))
    assert p.next_delay(7, "E") == 192.0  # 3 * 2**6, under the cap
    assert p.next_delay(8, "E") == 300.0  # 3 * 2**7 = 384, capped at 100 * 3
    assert p.next_delay(30, "E") == 300.0


@pytest.mark.parametrize("attempt", [1025, 1100, 5000])
def test_delay_stays_at_the_cap_after_very_many_attempts(attempt):
    """Unlimited attempts is the default: an activity may fail for days and must keep retrying."""
    assert exact().next_delay(attempt, "E") == 100.0
    capped = exact(backoff_coefficient=1.5, maximum_interval=timedelta(minutes=10))
    assert capped.next_delay(attempt, "E") == 600.0


def test_maximum_attempts_stops_after_that_many_attempts():
    p = exact(maximum_attempts=3)
    assert p.next_delay(1, "E") == 1.0
    assert p.next_delay(2, "E") == 2.0
    assert p.next_delay(3, "E") is None
    assert p.next_delay(4, "E") is None
    assert exact(maximum_attempts=1).next_delay(1, "E") is None


def test_unlimited_attempts_never_stop():
    assert exact(maximum_attempts=0).next_delay(500, "E") == 100.0


def test_non_retryable_error_types_stop_at_once():
    p = exact(non_retryable_error_types=("ValueError", "Fatal"))
    assert p.next_delay(1, "ValueError") is None
    assert p.next_delay(1, "Fatal") is None
    assert p.next_delay(1, "KeyError") == 1.0
    assert p.next_delay(1, "valueerror") == 1.0  # exact type names only


def test_non_retryable_flag_stops_at_once():
    assert exact().next_delay(1, "E", non_retryable=True) is None


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jitter_stays_within_its_bounds(jitter):
    p = RetryPolicy(jitter=jitter, maximum_interval=timedelta(seconds=10))
    rng = random.Random(1234)
    for attempt in (1, 3, 10):
        base = min(2.0 ** (attempt - 1), 10.0)
        delays = [p.next_delay(attempt, "E", rng=rng) for _ in range(300)]
        assert all(d is not None and base * (1 - jitter) <= d <= base * (1 + jitter) for d in delays)
        assert max(delays) - min(delays) > base * jitter  # actually spread, not constant
        assert all(d >= 0.0 for d in delays)  # type: ignore[operator]


def test_jitter_is_reproducible_with_a_seeded_rng():
    p = RetryPolicy(jitter=0.2)
    a = [p.next_delay(n, "E", rng=random.Random(7)) for n in range(1, 6)]
    b = [p.next_delay(n, "E", rng=random.Random(7)) for n in range(1, 6)]
    assert a == b
    expected = random.Random(7)
    assert a[0] == pytest.approx(1.0 * (1 + expected.uniform(-0.2, 0.2)))


def test_zero_jitter_uses_no_randomness():
    class Exploding(random.Random):
        def uniform(self, a: float, b: float) -> float:
            raise AssertionError("jitter=0 must not draw")

    assert exact().next_delay(2, "E", rng=Exploding()) == 2.0


@pytest.mark.parametrize("kwargs", [
    {"initial_interval": timedelta(0)},
    {"initial_interval": timedelta(seconds=-1)},
    {"backoff_coefficient": 0.5},
    {"maximum_attempts": -1},
    {"jitter": -0.1},
    {"jitter": 1.5},
    {"initial_interval": timedelta(seconds=10), "maximum_interval": timedelta(seconds=5)},
    {"max_attempts": 3},  # unknown field: a typo must not pass silently
])
def test_bad_policies_are_rejected(kwargs):
    with pytest.raises(ValidationError):
        RetryPolicy(**kwargs)


def test_validation_messages_say_what_is_wrong():
    with pytest.raises(ValidationError, match="initial_interval must be positive"):
        RetryPolicy(initial_interval=timedelta(0))
    with pytest.raises(ValidationError, match="maximum_interval must be at least initial_interval"):
        RetryPolicy(initial_interval=timedelta(seconds=10), maximum_interval=timedelta(seconds=5))


def test_policy_round_trips_through_its_json_form():
    p = RetryPolicy(initial_interval=timedelta(milliseconds=250), backoff_coefficient=1.5,
                    maximum_interval=timedelta(minutes=2), maximum_attempts=9,
                    non_retryable_error_types=("Fatal",), jitter=0.3)
    assert RetryPolicy.model_validate(p.model_dump(mode="json")) == p


def test_policy_is_immutable():
    with pytest.raises(ValidationError):
        DEFAULT_RETRY_POLICY.maximum_attempts = 3  # type: ignore[misc]
