"""Time formats: ISO 8601 UTC for status and events, RFC 5322 dates for headers.

Times the spool accepts lie between the POSIX epoch and the last second of year 9999 (what
`datetime` can show): `parse_time` refuses others with `OutOfRange`, and `iso` clamps a stored
one that is not (an older msgspool let such times in), so that no listing breaks on it.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime

EARLIEST = 0.0
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
_FIVE_DIGIT_YEAR = re.compile(r"[+-]?\d{5,}-")


class OutOfRange(ValueError):
    """A well-formed value outside what the spool can store and show."""


def in_range(ts: float) -> bool:
    return math.isfinite(ts) and EARLIEST <= ts <= LATEST


def clamp(ts: float) -> float | None:
    """`ts` moved into [EARLIEST, LATEST]; None for NaN, which names no moment at all."""
    if math.isnan(ts):
        return None
    return min(max(ts, EARLIEST), LATEST)


def iso(ts: float | None) -> str | None:
    if ts is None or (ts := clamp(ts)) is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> float:
    """A point in time as the API takes it: POSIX seconds, or ISO 8601 with a zone (``Z`` or an
    offset; a time without one would mean a different moment on every machine). ValueError for
    anything else, OutOfRange (a ValueError) for a time before 1970 or after 9999."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        ts = float(value)
    elif isinstance(value, str):
        ts = _parse_iso(value)
    else:
        raise ValueError(f"not a time: {value!r}")
    if not in_range(ts):
        raise OutOfRange(f"{value!r} is not a time between 1970 and 9999")
    return ts


def _parse_iso(value: str) -> float:
    if _FIVE_DIGIT_YEAR.match(value):
        raise OutOfRange(f"{value!r} is not a time between 1970 and 9999")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {value!r}")
    try:
        return moment.timestamp()
    except OverflowError as err:  # year 1 or 9999 with an offset that leaves the calendar
        raise OutOfRange(f"{value!r} is not a time between 1970 and 9999") from err


_rfc5322_cache: tuple[int, str] = (0, "")


def rfc5322(ts: float | None = None) -> str:
    """An RFC 5322 §3.3 date-time; cached per second because every Received: header needs one."""
    global _rfc5322_cache
    now = int(ts if ts is not None else time.time())
    if _rfc5322_cache[0] != now:
        _rfc5322_cache = (now, format_datetime(datetime.fromtimestamp(now, UTC)))
    return _rfc5322_cache[1]
