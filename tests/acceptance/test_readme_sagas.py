"""The README's "Sagas" typed in as written (the blocks marked ``sagas``): a trip booked, and
one whose flight fails compensated newest first, against a fresh database."""

from __future__ import annotations

import pytest

from support import TIMEOUT
from support.readme import run_readme

pytestmark = pytest.mark.acceptance


def test_the_saga_example_works_as_typed(tmp_path, db_url):
    ran = run_readme("sagas", tmp_path, db_url, TIMEOUT * 2)
    lines = ran.stdout.splitlines()
    assert "Itinerary(car='car for ann', hotel='hotel for ann', flight='seat on LH 123')" in lines
    # The compensations ran newest first, the flight's (registered before its step) included.
    cancelled = [line for line in lines if line.startswith("cancelled ")]
    assert cancelled == ["cancelled any seat for bob", "cancelled the hotel for bob", "cancelled the car for bob"]
    assert ("workflow 'trip-bob' failed: ActivityError: activity book_flight (seq 10) failed: ApplicationError: "
            "the flight is full") in lines
    assert "compensated ['cancel_flight', 'cancel_hotel', 'cancel_car']" in lines
    described = ran.stdout[ran.stdout.index("workflow  trip-bob"):]
    for shown in ("book_flight", "cancel_flight", "cancel_hotel", "cancel_car"):
        assert shown in described
