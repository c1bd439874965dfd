"""Moves this process's wall clock ``CAIRN_TEST_CLOCK_SKEW`` seconds ahead (``time.time``,
``time.time_ns``, ``datetime.now`` and friends), as a host with a wrong clock would be.

Put this directory on ``PYTHONPATH`` of a worker subprocess. The monotonic clocks are left
alone (they have no epoch to be wrong about).
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

_SKEW = float(os.environ.get("CAIRN_TEST_CLOCK_SKEW", "0"))
_time, _time_ns = time.time, time.time_ns


def _skewed_time() -> float:
    return _time() + _SKEW


def _skewed_time_ns() -> int:
    return _time_ns() + int(_SKEW * 1e9)


class _SkewedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return super().now(tz) + datetime.timedelta(seconds=_SKEW)

    @classmethod
    def utcnow(cls) -> Any:
        return super().utcnow() + datetime.timedelta(seconds=_SKEW)

    @classmethod
    def today(cls) -> Any:
        return cls.now()


if _SKEW:
    time.time, time.time_ns = _skewed_time, _skewed_time_ns
    datetime.datetime = _SkewedDatetime  # type: ignore[misc]  # `from datetime import datetime` gets it
