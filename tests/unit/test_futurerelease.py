"""RFC 4865 FUTURERELEASE: the EHLO keyword and HOLDFOR/HOLDUNTIL parsed into a release time."""

from __future__ import annotations

import pytest

from msgspool.domain.futurerelease import (
    BAD_HOLDFOR,
    BAD_HOLDUNTIL,
    BOTH_GIVEN,
    IN_THE_PAST,
    FutureReleaseError,
    ehlo_keyword,
    parse_date_time,
    release_time,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
WEEK = 604800


def refusal(params: dict[str, str], max_interval: int = WEEK) -> str:
    with pytest.raises(FutureReleaseError) as caught:
        release_time(params, NOW, max_interval)
    return caught.value.reply.line()


def test_the_ehlo_keyword_names_the_longest_hold_and_the_latest_release_time() -> None:
    assert ehlo_keyword(WEEK, NOW) == "FUTURERELEASE 604800 2027-01-22T08:00:00Z"


def test_no_hold_parameter_means_no_release_time() -> None:
    assert release_time({"SIZE": "100"}, NOW, WEEK) is None


@pytest.mark.parametrize("value", ["0", "2", "604800"])
def test_holdfor_releases_that_many_seconds_from_now(value: str) -> None:
    assert release_time({"HOLDFOR": value}, NOW, WEEK) == NOW + int(value)


@pytest.mark.parametrize("value", ["", "abc", "-5", "+5", "1.5", "1234567890"])
def test_a_holdfor_that_is_not_one_to_nine_digits_is_a_syntax_error(value: str) -> None:
    assert refusal({"HOLDFOR": value}) == BAD_HOLDFOR.line()
    assert BAD_HOLDFOR.code == 501 and BAD_HOLDFOR.enhanced == "5.5.4"


@pytest.mark.parametrize(("value", "expected"), [
    ("2027-01-15T09:00:00Z", NOW + 3600),
    ("2027-01-15t09:00:00z", NOW + 3600),
    ("2027-01-15T10:00:00+01:00", NOW + 3600),
    ("2027-01-15T08:00:00-01:00", NOW + 3600),
    ("2027-01-15T09:00:00.250Z", NOW + 3600.25),
])
def test_holduntil_takes_an_rfc_3339_date_time_in_utc_or_with_an_offset(value: str, expected: float) -> None:
    assert release_time({"HOLDUNTIL": value}, NOW, WEEK) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["2027-01-15 09:00:00Z", "2027-01-15T09:00:00", "1800003600",
                                   "2027-13-01T00:00:00Z", "2027-01-15T09:00Z"])
def test_a_holduntil_that_is_not_a_date_time_is_a_syntax_error(value: str) -> None:
    assert refusal({"HOLDUNTIL": value}) == BAD_HOLDUNTIL.line()


def test_a_holduntil_in_the_past_is_refused_as_a_syntax_error() -> None:
    assert refusal({"HOLDUNTIL": "2027-01-15T07:59:59Z"}) == IN_THE_PAST.line()
    assert IN_THE_PAST.code == 501 and IN_THE_PAST.enhanced == "5.5.4"


def test_holdfor_and_holduntil_together_are_refused() -> None:
    assert refusal({"HOLDFOR": "10", "HOLDUNTIL": "2027-01-15T09:00:00Z"}) == BOTH_GIVEN.line()
    assert BOTH_GIVEN.code == 501


@pytest.mark.parametrize("params", [{"HOLDFOR": "604801"}, {"HOLDUNTIL": "2027-01-22T08:00:01Z"}])
def test_a_hold_beyond_the_maximum_fails_the_transaction(params: dict[str, str]) -> None:
    assert refusal(params).startswith("554 5.5.4 Requested release is too far in the future: at most 604800")


def test_a_leap_second_is_a_date_time() -> None:
    assert parse_date_time("2016-12-31T23:59:60Z") == parse_date_time("2017-01-01T00:00:00Z")
