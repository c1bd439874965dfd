"""cairn.common: run ids."""

def test_run_ids_made_in_one_millisecond_still_sort_in_the_order_they_were_made(monkeypatch):
    """`cairn list` pages by run id: ids of one process must not tie-break at random."""
    import uuid

    from cairn import common
    monkeypatch.setattr(common.time, "time_ns", lambda: 1_700_000_000_000_000_000)  # one frozen ms
    ids = [common.new_run_id() for _ in range(500)]
    assert ids == sorted(ids) and len(set(ids)) == 500
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_a_run_id_counter_that_wraps_carries_and_keeps_the_variant(monkeypatch):
    import uuid

    from cairn import common
    monkeypatch.setattr(common.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    first = uuid.UUID(common.new_run_id()).int
    monkeypatch.setattr(common, "_last_run_id", first | ((1 << 62) - 1))  # the counter at its top
    wrapped = uuid.UUID(common.new_run_id())
    assert wrapped.int > first | ((1 << 62) - 1) and wrapped.variant == uuid.RFC_4122 and wrapped.version == 7
