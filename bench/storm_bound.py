"""The LLM storm's bound: the makespan of an idealised client, simulated.

The ideal (calls ÷ limit) ignores that the storm provider counts its 500s toward the limit
and that a failed call waits out its retry backoff; the even-rate floor ignores the backoff
and that a client may spend an empty window at once. This bound counts all of it for a
client that no real system can beat while it honours the limit: zero overhead (a call is
sent the instant it is ready and the window has room), the provider's exact sliding window,
never a request during a 429 burst, each call failing independently with the provider's
fail rate, the provider's mean latency, and a retry backoff of ``initial * 2^k`` capped at
``cap`` (cairn's chat default and the peers': 0.5 s, x2, 8 s). Ready calls go in the order
they became ready. The makespan is the median over ``seeds`` simulated runs (the spread is
returned too): the tail is set by the unluckiest calls' runs of 500s in the last window.

    python bench/storm_bound.py                 # the full workload's bound, and other backoffs
"""

from __future__ import annotations

import collections
import heapq
import random
import statistics
from typing import Any

RETRY_INITIAL_S, RETRY_CAP_S = 0.5, 8.0  # cairn's DEFAULT_CHAT_RETRY_POLICY; the peers' too


def simulate(seed: int, *, workflows: int, calls: int, rpm: int, window: float, fail_rate: float,
             burst_every: float, burst_seconds: float, latency_s: float,
             initial: float = RETRY_INITIAL_S, cap: float = RETRY_CAP_S) -> float:
    """One idealised run's makespan (seconds from the first request to the last answer)."""
    rng = random.Random(seed)
    ready = [(0.0, wf, 0, 0) for wf in range(workflows)]  # (ready at, workflow, call, failures so far)
    heapq.heapify(ready)
    sent: collections.deque[float] = collections.deque()
    makespan = 0.0
    while ready:
        t, wf, call, failures = heapq.heappop(ready)
        while sent and sent[0] <= t - window:
            sent.popleft()
        if len(sent) >= rpm:  # the window is full until its oldest request leaves
            heapq.heappush(ready, (sent[0] + window + 1e-9, wf, call, failures))
            continue
        into = t % burst_every
        if t >= burst_every and into < burst_seconds:  # bursts from burst_every on, as the provider's
            heapq.heappush(ready, (t - into + burst_seconds, wf, call, failures))
            continue
        sent.append(t)
        answered = t + latency_s
        if rng.random() < fail_rate:
            heapq.heappush(ready, (answered + min(initial * 2 ** failures, cap), wf, call, failures + 1))
        elif call + 1 < calls:
            heapq.heappush(ready, (answered, wf, call + 1, 0))
        else:
            makespan = max(makespan, answered)
    return makespan


def bound(*, workflows: int, calls: int, provider: dict[str, Any], seeds: int = 10,
          initial: float = RETRY_INITIAL_S, cap: float = RETRY_CAP_S) -> dict[str, float]:
    """The median, min and max makespan over ``seeds`` runs, for the storm provider's
    settings (``rpm``, ``window``, ``fail_rate``, ``burst_every``, ``burst_seconds``,
    ``latency_min_ms``, ``latency_max_ms``)."""
    latency = (float(provider.get("latency_min_ms", 20)) + float(provider.get("latency_max_ms", 50))) / 2000
    runs = [simulate(seed, workflows=workflows, calls=calls, rpm=int(provider["rpm"]),
                     window=float(provider["window"]), fail_rate=float(provider["fail_rate"]),
                     burst_every=float(provider["burst_every"]), burst_seconds=float(provider["burst_seconds"]),
                     latency_s=latency, initial=initial, cap=cap) for seed in range(seeds)]
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


def main() -> None:
    provider = {"rpm": 1800, "window": 60.0, "fail_rate": 0.3, "burst_every": 15.0, "burst_seconds": 2.0,
                "latency_min_ms": 20.0, "latency_max_ms": 50.0}
    ideal = 1000 * 3 / provider["rpm"] * provider["window"]
    for initial, cap in [(RETRY_INITIAL_S, RETRY_CAP_S), (1.0, 8.0), (0.5, 2.0), (0.0, 0.0)]:
        b = bound(workflows=1000, calls=3, provider=provider, initial=initial, cap=cap)
        print(f"backoff {initial:g} s x2, cap {cap:g} s: bound {b['median']:.1f} s ({b['median'] / ideal:.2f}x the "
              f"ideal {ideal:.0f} s; {b['min']:.1f}-{b['max']:.1f} over 10 seeds)")


if __name__ == "__main__":
    main()
