"""The status table's rows for the daemon's listeners (issue 12.8): each SMTP listener (smtp, smtps,
submission), the HTTP API, and the sendmail intake (the spool itself, which `msgspool sendmail`
and API clients write into). `serve` registers them with its spooler (Spooler.listeners); with
the daemon down, `status` shows the configured ones as `stopped`.

    name        smtp | smtps | submission | http | sendmail
    kind        listener
    address     HOST:PORT (sendmail: the spool directory)
    status      online; offline once the daemon stops taking new sessions (draining); sendmail:
                failure while the spool has less than queue_minfree + 1 MB free (LOW_ROOM)
    inbound     enabled while it takes mail, active while it has a session or request open
    counts      smtp*: sessions open and accepted so far (the SMTP listeners share one count),
                connections shed for lack of descriptors; http: requests so far and open, event
                streams; sendmail: bytes free in the spool
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from msgspool.config import Settings
from msgspool.domain.outcome import Reply
from msgspool.domain.status import complete, direction, stopped

Row = Callable[[], dict[str, Any]]
# The sendmail intake's row is in failure while the spool has less than queue_minfree and this
# much free: the next submission of any size may be refused (452 4.3.1, exit 75).
LOW_ROOM = 1 << 20
SMTP_KINDS = (("smtp", "smtp_listen", 25), ("smtps", "smtps_listen", 465), ("submission", "submission_listen", 587))


class SessionCount(Protocol):
    draining: bool
    accepted: int

    @property
    def open(self) -> int: ...


@dataclass
class HTTPCounts:
    """What the HTTP API counts for its row: requests answered or under way, and those open now
    (an SSE stream stays open)."""

    requests: int = 0
    open: int = 0


def smtp_row(name: str, address: str, sessions: SessionCount, shed: Callable[[], int]) -> Row:
    def row() -> dict[str, Any]:
        draining, open_now = sessions.draining, sessions.open
        return {"name": name, "kind": "listener", "protocol": "smtp", "address": address,
                "status": "offline" if draining else "online",
                "inbound": direction(not draining, open_now > 0),
                "counts": {"sessions_open": open_now, "sessions": sessions.accepted, "shed": shed()},
                "status_string": "draining: new sessions get 421" if draining else
                f"listening on {address}; {open_now} sessions open (all SMTP listeners)"}
    return row


def http_row(address: str, counts: HTTPCounts, streams: Callable[[], int]) -> Row:
    def row() -> dict[str, Any]:
        return {"name": "http", "kind": "listener", "protocol": "http", "address": address, "status": "online",
                "inbound": direction(True, counts.open > 0),
                "counts": {"requests": counts.requests, "requests_open": counts.open, "event_streams": streams()},
                "status_string": f"listening on {address}; {counts.open} requests open"}
    return row


def sendmail_row(spool: str, room: Callable[[], Reply | None], free: Callable[[], int]) -> Row:
    """The spool as an intake: `msgspool sendmail` and API clients commit into it directly."""
    def row() -> dict[str, Any]:
        refusal = room()
        return {"name": "sendmail", "kind": "listener", "protocol": "spool", "address": spool,
                "status": "failure" if refusal else "online", "inbound": direction(refusal is None),
                "counts": {"bytes_free": free()},
                "status_string": refusal.line() if refusal else "the spool takes submissions (msgspool sendmail)"}
    return row


def configured(settings: Settings) -> list[dict[str, Any]]:
    """The listeners `settings` would start, as rows of a daemon that is down."""
    from msgspool.transports.smtp import split_hostport

    rows = []
    for name, setting, port in (*SMTP_KINDS, ("http", "http_listen", 8025)):
        value = getattr(settings, setting, None)
        if value:
            host, number = split_hostport(value, port)
            rows.append({"name": name, "kind": "listener", "protocol": "http" if name == "http" else "smtp",
                         "address": f"{host}:{number}", "status": "stopped", "inbound": direction(True)})
    rows = [stopped(row) for row in rows]
    # `msgspool sendmail` writes into the spool with the daemon down too: delivered once it runs.
    return [*rows, complete({"name": "sendmail", "kind": "listener", "protocol": "spool",
                             "address": str(settings.spool_path), "status": "online", "inbound": direction(True),
                             "status_string": "the spool takes submissions; they are sent once the daemon runs"})]
