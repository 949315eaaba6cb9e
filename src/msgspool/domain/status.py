"""The status table's vocabulary (MAPI's status table, issue 12.8): one row per provider — the
spooler, each transport, each listener (SMTP, HTTP, sendmail intake), each fetch account — with
its state, what it does in each direction, its counts and a status string.

    status          online | offline | failure (and `stopped`, with the daemon down)    PR_STATUS_CODE
    inbound         {"enabled": bool, "active": bool}: takes mail in / is taking some now
    outbound        {"enabled": bool, "active": bool}: sends mail / is sending some now
    status_code     the MAPI bits of the above (STATUS_AVAILABLE, STATUS_OFFLINE, ...)
    status_string   a sentence for people; the spooler supplies one when a provider    PR_STATUS_STRING
                    gives none, as MAPI's does

Pure functions over plain rows (dicts, as `status --json` prints them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# PR_STATUS_CODE bits (MAPI mapidefs.h).
STATUS_AVAILABLE = 0x1
STATUS_OFFLINE = 0x2
STATUS_FAILURE = 0x4
STATUS_INBOUND_ENABLED = 0x10000
STATUS_INBOUND_ACTIVE = 0x20000
STATUS_OUTBOUND_ENABLED = 0x100000
STATUS_OUTBOUND_ACTIVE = 0x200000

ONLINE, OFFLINE, FAILURE, STOPPED = "online", "offline", "failure", "stopped"
AVAILABLE = frozenset({ONLINE, FAILURE})  # MAPI: a failing provider is still there (it may be shut down soon)


def direction(enabled: bool, active: bool = False) -> dict[str, bool]:
    """One direction of a row: active only while enabled."""
    return {"enabled": enabled, "active": enabled and active}


def status_code(status: str, inbound: Mapping[str, bool], outbound: Mapping[str, bool]) -> int:
    """The row as MAPI's PR_STATUS_CODE."""
    code = STATUS_AVAILABLE if status in AVAILABLE else STATUS_OFFLINE
    if status == FAILURE:
        code |= STATUS_FAILURE
    for bits, enabled, active in ((STATUS_INBOUND_ENABLED, inbound["enabled"], inbound["active"]),
                                  (STATUS_OUTBOUND_ENABLED, outbound["enabled"], outbound["active"])):
        if enabled:
            code |= bits
        if active:
            code |= bits << 1  # ..._ACTIVE is the bit above ..._ENABLED
    return code


def default_string(row: Mapping[str, Any]) -> str:
    """PR_STATUS_STRING for a row whose provider gave none: its reason or last error when it has
    one, else what it is doing."""
    for key in ("reason", "last_error"):
        if row.get(key):
            return str(row[key])
    status = row.get("status")
    if status == STOPPED:
        return "not running (the daemon is down)"
    if status == OFFLINE:
        return "offline"
    busy = [name for name in ("inbound", "outbound") if row.get(name, {}).get("active")]
    if busy:
        return {"inbound": "receiving", "outbound": "sending"}[busy[0]] if len(busy) == 1 else "sending and receiving"
    return "ready"


def complete(row: dict[str, Any]) -> dict[str, Any]:
    """Fill in what every row has: both directions (off unless given), `status_code`, and the
    default `status_string`. Returns the row."""
    row.setdefault("inbound", direction(False))
    row.setdefault("outbound", direction(False))
    row.setdefault("counts", {})
    if not row.get("status_string"):
        row["status_string"] = default_string(row)
    row["status_code"] = status_code(str(row.get("status")), row["inbound"], row["outbound"])
    return row


def stopped(row: dict[str, Any]) -> dict[str, Any]:
    """A row as it reads with the daemon down: nothing runs, nothing is active."""
    row["status"] = STOPPED
    for name in ("inbound", "outbound"):
        if name in row:
            row[name] = direction(row[name]["enabled"], False)
    row["status_string"] = ""
    return complete(row)


def changes(before: Mapping[str, tuple[str, int]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose status or status code differ from `before` ((kind, name) -> (status, code)
    as `snapshot` makes it); a row not seen before is a change too."""
    now = snapshot(rows)
    return [row for row in rows if before.get(key(row)) != now[key(row)]]


def key(row: Mapping[str, Any]) -> str:
    return f"{row.get('kind')}:{row.get('name')}"


_ACTIVE = STATUS_INBOUND_ACTIVE | STATUS_OUTBOUND_ACTIVE


def snapshot(rows: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """(kind, name) -> (status, code without the ACTIVE bits): a session or a transaction that
    starts and ends is no change of the row's state."""
    return {key(row): (row["status"], row["status_code"] & ~_ACTIVE) for row in rows}
