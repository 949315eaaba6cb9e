"""Future message release (RFC 4865 FUTURERELEASE): the EHLO keyword and the MAIL parameters
``HOLDFOR=seconds`` / ``HOLDUNTIL=date-time``, parsed into the time the message is released.

Pure: the listener (smtpd/protocol.py) asks `release_time` and puts what it returns into the
envelope; the message's `deliver_after` becomes that time, so its recipients are not due until
then (the scheduler needs nothing new: a recipient waits for its next_attempt_at).

Syntax (§3, with verified erratum 2040 for the date-time)::

    future-release-ehlo = "FUTURERELEASE" SP max-future-release-interval SP max-future-release-date-time
    hold-param          = ("HOLDFOR=" future-release-integer) / ("HOLDUNTIL=" date-time)
    future-release-integer = 1*9DIGIT          ; seconds
    date-time           = RFC 3339 §5.6, "Z" or a numeric offset

Replies (§4; 501 is RFC 5321's "syntax error in parameters", 554 "transaction failed", and
5.5.4 is RFC 3463's "invalid command arguments"):

    malformed HOLDFOR / HOLDUNTIL value            501 5.5.4
    both HOLDFOR and HOLDUNTIL on one MAIL         501 5.5.4
    a HOLDUNTIL time already past                  501 5.5.4   (a semantic error answered as a
                                                               syntax error, as §4 advises)
    beyond max-future-release-interval / -date-time 554 5.5.4
    the extension not offered to this client       555 5.5.4   (RFC 5321 §4.1.1.11: unknown parameter;
                                                               answered by the listener, not here)

A hold is satisfied where it was accepted: msgspool keeps the message until the release time and
only then hands it to a next hop, so HOLDFOR/HOLDUNTIL is never passed on (§5: a relay that did
pass it on would hold it a second time, from its own clock).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

from msgspool.domain.outcome import Reply

KEYWORD = "FUTURERELEASE"
HOLDFOR, HOLDUNTIL = "HOLDFOR", "HOLDUNTIL"
PARAMETERS = frozenset({HOLDFOR, HOLDUNTIL})
_INTEGER = re.compile(r"^[0-9]{1,9}$")  # future-release-integer = 1*9DIGIT
_DATE_TIME = re.compile(  # RFC 3339 §5.6 date-time; "T" and "Z" may be lower case (§5.6 NOTE)
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))$")

BOTH_GIVEN = Reply(501, "5.5.4", "HOLDFOR and HOLDUNTIL are mutually exclusive")
BAD_HOLDFOR = Reply(501, "5.5.4", "Bad HOLDFOR parameter: 1 to 9 digits of seconds expected")
BAD_HOLDUNTIL = Reply(501, "5.5.4", "Bad HOLDUNTIL parameter: an RFC 3339 date-time expected")
IN_THE_PAST = Reply(501, "5.5.4", "HOLDUNTIL time is in the past")


class FutureReleaseError(Exception):
    """A HOLDFOR/HOLDUNTIL the server refuses; `reply` is the answer to the MAIL command."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


def format_date_time(t: float) -> str:
    """RFC 3339 UTC, whole seconds: ``2026-11-25T10:00:00Z``."""
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ehlo_keyword(max_interval: int, now: float) -> str:
    """The EHLO line: the longest hold, and the latest release time that allows (now + it)."""
    return f"{KEYWORD} {max_interval} {format_date_time(now + max_interval)}"


def parse_date_time(text: str) -> float:
    """An RFC 3339 date-time as a POSIX time; ValueError when it is not one."""
    m = _DATE_TIME.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    leap = second == 60  # RFC 3339 §5.7 allows a leap second; datetime does not
    if m.group(8):
        offset: timezone = UTC
    else:
        sign = -1 if m.group(9) == "-" else 1
        offset = timezone(sign * timedelta(hours=int(m.group(10)), minutes=int(m.group(11))))
    moment = datetime(year, month, day, hour, minute, 59 if leap else second, tzinfo=offset)
    return moment.timestamp() + (1 if leap else 0) + float(m.group(7) or 0)


def release_time(params: Mapping[str, str], now: float, max_interval: int) -> float | None:
    """The release time a MAIL command's parameters ask for (None: no hold requested); raises
    FutureReleaseError with the reply when the request is malformed or beyond what is offered."""
    holdfor, holduntil = params.get(HOLDFOR), params.get(HOLDUNTIL)
    if holdfor is None and holduntil is None:
        return None
    if holdfor is not None and holduntil is not None:
        raise FutureReleaseError(BOTH_GIVEN)
    if holdfor is not None:
        if not _INTEGER.match(holdfor):
            raise FutureReleaseError(BAD_HOLDFOR)
        release = now + int(holdfor)
    else:
        release = _until(holduntil or "", now)
    if release - now > max_interval:
        raise FutureReleaseError(too_far(max_interval, now))
    return release


def _until(value: str, now: float) -> float:
    try:
        release = parse_date_time(value)
    except ValueError as err:
        raise FutureReleaseError(BAD_HOLDUNTIL) from err
    if release < now:
        raise FutureReleaseError(IN_THE_PAST)
    return release


def too_far(max_interval: int, now: float) -> Reply:
    return Reply(554, "5.5.4", f"Requested release is too far in the future: at most {max_interval} seconds,"
                               f" until {format_date_time(now + max_interval)}")
