"""The fake provider's storm, as pure decisions over given times: bursts, the sliding rpm
window, the seeded failure draws, and the call key a request carries."""

from __future__ import annotations

import pytest

from cairn.llm.fake import Storm, _StormState, call_key, retry_after_headers


def decide_all(state: _StormState, times: list[float], call: str | None = None) -> list[tuple[str, float | None]]:
    return [state.decide(state.started + t, call) for t in times]


def test_bursts_answer_429_until_their_end():
    state = _StormState(Storm(burst_every=15, burst_seconds=2), started=1000.0)
    verdicts = dict(zip([0.0, 14.9, 15.0, 15.5, 16.99, 17.0, 29.0, 30.25, 45.0],
                        decide_all(state, [0.0, 14.9, 15.0, 15.5, 16.99, 17.0, 29.0, 30.25, 45.0]), strict=True))
    assert [t for t, (why, _) in verdicts.items() if why == "burst"] == [15.0, 15.5, 16.99, 30.25, 45.0]
    assert verdicts[15.5][1] == pytest.approx(1.5)   # Retry-After runs to the burst's end
    assert verdicts[30.25][1] == pytest.approx(1.75)
    assert verdicts[17.0] == ("ok", None)


def test_first_burst_can_be_placed():
    assert Storm(burst_every=10, burst_seconds=1, burst_first=0).burst_end(0.5) == 1.0
    assert Storm(burst_every=10, burst_seconds=1, burst_first=3).burst_end(0.5) is None
    assert Storm(burst_every=10, burst_seconds=1, burst_first=3).burst_end(13.5) == 14.0
    assert Storm().burst_end(1e6) is None  # no bursts unless asked


def test_rpm_is_a_true_sliding_window():
    """3 per 10 s: a fixed bucket would let 3 through at 9.9 s and 3 more at 10.1 s; the
    sliding window refuses until the oldest of the three leaves it."""
    state = _StormState(Storm(rpm=3, rpm_window=10), started=0.0)
    arrivals = [9.7, 9.8, 9.9, 10.1, 19.7, 19.75, 19.8, 19.85, 19.95]
    got = decide_all(state, arrivals)
    assert [w for w, _ in got] == ["ok", "ok", "ok", "rpm", "ok", "rpm", "ok", "rpm", "ok"]
    assert got[3][1] == pytest.approx(9.6)  # until 19.7, when 9.7 leaves
    assert got[5][1] == pytest.approx(0.05)  # 9.8 leaves at 19.8
    times = [t for t, (w, _) in zip(arrivals, got, strict=True) if w == "ok"]
    assert max(sum(1 for b in times if a - 10 < b <= a) for a in times) <= 3


def test_refusals_do_not_fill_the_window():
    state = _StormState(Storm(rpm=1, rpm_window=5), started=0.0)
    assert [w for w, _ in decide_all(state, [0, 1, 2, 3, 4, 5, 5.5])] == ["ok", "rpm", "rpm", "rpm", "rpm", "ok", "rpm"]


def test_failures_are_seeded_by_call_and_occurrence():
    storm = Storm(failure_rate=0.3, seed=7)
    a, b = _StormState(storm, 0.0), _StormState(storm, 0.0)
    keys = [f"wf-{i}.{j}" for i in range(300) for j in range(3)]
    first = [a.decide(1.0, k)[0] for k in keys]
    second = [b.decide(1.0, k)[0] for k in reversed(keys)][::-1]  # another interleaving: the same calls fail
    assert first == second
    share = first.count("fail") / len(first)
    assert 0.25 < share < 0.35, share
    again = [a.decide(1.0, k)[0] for k in keys]  # the second request of each call draws anew
    assert again != first
    other = [_StormState(Storm(failure_rate=0.3, seed=8), 0.0).decide(1.0, k)[0] for k in keys]
    assert other != first


def test_failures_without_a_call_key_follow_the_seed():
    runs = [[_s.decide(1.0, None)[0] for _ in range(200)] for _s in
            (_StormState(Storm(failure_rate=0.3, seed=1), 0.0), _StormState(Storm(failure_rate=0.3, seed=1), 0.0))]
    assert runs[0] == runs[1]
    assert 40 < runs[0].count("fail") < 80


def test_burst_then_rpm_then_failure():
    state = _StormState(Storm(failure_rate=1.0, burst_every=10, burst_seconds=1, rpm=1, rpm_window=60), 0.0)
    assert [w for w, _ in decide_all(state, [1, 2, 10.5])] == ["fail", "rpm", "burst"]


@pytest.mark.parametrize(("body", "key"), [
    ({"messages": [{"role": "user", "content": "call wf-3.1: say hi"}]}, "wf-3.1"),
    ({"messages": [{"role": "user", "content": "call a"}, {"role": "assistant", "content": "x"},
                   {"role": "user", "content": "no marker"}]}, None),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "please call k:9 now"}]}]}, "k:9"),
    ({"messages": [{"role": "system", "content": "call sys"}]}, None),
    ("not json", None),
])
def test_call_key(body, key):
    assert call_key(body) == key


def test_retry_after_headers():
    assert retry_after_headers(1.2) == {"retry-after-ms": "1200", "retry-after": "2"}
    assert retry_after_headers(-1) == {"retry-after-ms": "0", "retry-after": "0"}
