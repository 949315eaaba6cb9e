"""Time formats: ISO 8601 UTC for status and events, RFC 5322 dates for headers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: object) -> float:
    """A point in time as the API takes it: POSIX seconds, or ISO 8601 with a zone (``Z`` or an
    offset; a time without one would mean a different moment on every machine). ValueError else."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {value!r}")
    return moment.timestamp()


_rfc5322_cache: tuple[int, str] = (0, "")


def rfc5322(ts: float | None = None) -> str:
    """An RFC 5322 §3.3 date-time; cached per second because every Received: header needs one."""
    global _rfc5322_cache
    now = int(ts if ts is not None else time.time())
    if _rfc5322_cache[0] != now:
        _rfc5322_cache = (now, format_datetime(datetime.fromtimestamp(now, UTC)))
    return _rfc5322_cache[1]
