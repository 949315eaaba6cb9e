"""Times the spool takes and shows: 1970 to 9999, refused outside on the way in, clamped on the way out."""

from __future__ import annotations

import math

import pytest

from msgspool.domain.timefmt import LATEST, OutOfRange, iso, parse_time


@pytest.mark.parametrize("value", [1e300, -1, -1e-3, math.inf, -math.inf, math.nan, LATEST + 1,
                                   "10000-01-01T00:00:00Z", "+10000-01-01T00:00:00Z", "9999-12-31T23:59:59-05:00",
                                   "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00"])
def test_a_time_outside_1970_to_9999_is_out_of_range(value: object) -> None:
    with pytest.raises(OutOfRange):
        parse_time(value)


@pytest.mark.parametrize("value", ["tomorrow", "2030-01-01T00:00:00", True, None, [1]])
def test_a_value_that_is_no_time_is_a_plain_value_error(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(value)
    assert not isinstance(caught.value, OutOfRange)


def test_the_edges_are_accepted() -> None:
    assert parse_time(0) == 0.0
    assert parse_time("9999-12-31T23:59:59Z") == LATEST


@pytest.mark.parametrize(("stored", "shown"), [
    (1e300, "9999-12-31T23:59:59.000Z"), (math.inf, "9999-12-31T23:59:59.000Z"), (LATEST + 0.9999999,
                                                                                  "9999-12-31T23:59:59.000Z"),
    (-1e300, "1970-01-01T00:00:00.000Z"), (math.nan, None), (None, None), (1.5, "1970-01-01T00:00:01.500Z"),
])
def test_iso_never_raises_on_a_stored_time_and_clamps_it(stored: float | None, shown: str | None) -> None:
    assert iso(stored) == shown
