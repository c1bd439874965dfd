"""cairn.options: run ids."""

from __future__ import annotations

import uuid

from cairn import options as common

ONE_MS_NS = 1_700_000_000_000_000_000  # a frozen clock: every id in one millisecond


def test_run_ids_made_in_one_millisecond_still_sort_in_the_order_they_were_made(monkeypatch):
    """`cairn list` pages by run id: ids of one process must not tie-break at random."""
    monkeypatch.setattr(common.time, "time_ns", lambda: ONE_MS_NS)
    ids = [common.new_run_id() for _ in range(500)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 500
    assert {(uuid.UUID(i).version, uuid.UUID(i).variant) for i in ids} == {(7, uuid.RFC_4122)}


def test_a_run_id_counter_that_wraps_carries_and_keeps_the_variant(monkeypatch):
    monkeypatch.setattr(common.time, "time_ns", lambda: ONE_MS_NS)
    top = uuid.UUID(common.new_run_id()).int | ((1 << 62) - 1)  # the 62-bit counter at its top
    monkeypatch.setattr(common, "_last_run_id", top)
    wrapped = uuid.UUID(common.new_run_id())
    assert wrapped.int > top
    assert (wrapped.version, wrapped.variant) == (7, uuid.RFC_4122)
