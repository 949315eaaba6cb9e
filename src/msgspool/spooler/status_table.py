"""The rows of the status table (MAPI's status table; domain/status.py says what every row holds):
a transport's row made from what delivery here knows, the spooler's and the fetch accounts' rows
completed, the delivery process's part merged into the intake process's table, the store's
backlog added. `Spooler.status` and `Spooler.status_table` put them together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from msgspool.domain import status as status_row
from msgspool.domain.timefmt import iso
from msgspool.ports import Transport
from msgspool.spooler.destinations import Destination
from msgspool.spooler.link import RemoteDelivery


def transport_row(transport: Transport, destinations: Iterable[Destination], offline_since: float | None,
                  delivering: bool) -> dict[str, Any]:
    """A transport's row, with its destinations as delivery here knows them."""
    dests = [d for d in destinations if d.transport is transport]
    failing = [d for d in dests if d.health.down or d.failure is not None]
    reason = None
    if failing:  # MAPI's status row in FAILURE: say why (the transport's error first)
        worst = next((d for d in failing if d.failure is not None), failing[0])
        last = worst.failure or worst.health.last_reply
        reason = f"{worst.nexthop}: {last.line()}" if last else f"{worst.nexthop}: down"
    since = offline_since
    if since is not None:
        reason = f"transport {transport.name} is offline (since {iso(since)})"
    sending = sum(len(d.inflight) for d in dests)
    counts = {key: sum(getattr(d, key) for d in dests) for key in ("delivered", "deferred", "failed")}
    counts.update(connections=sum(d.workers for d in dests), queued=sum(len(d.jobs) for d in dests),
                  transactions=sending, destinations_down=sum(d.health.down for d in dests))
    return {
        "name": transport.name, "kind": "transport", "addrtypes": sorted(transport.addrtypes),
        "status": "offline" if since is not None else "failure" if failing else "online", "reason": reason,
        "offline": since is not None, "offline_since": iso(since),
        "inbound": status_row.direction(False),
        "outbound": status_row.direction(since is None and delivering, sending > 0), "counts": counts,
        "destinations": [{
            "name": d.nexthop, "status": "down" if d.health.down else "up",
            "health": "down" if d.health.down else "up", "connections": d.workers,
            "queued": len(d.jobs), "delivered": d.delivered, "deferred": d.deferred, "failed": d.failed,
            "transactions": len(d.inflight),
            "last_error": d.failure.line() if d.failure else
            d.health.last_reply.line() if d.health.down and d.health.last_reply else None,
        } for d in dests]}


async def merge_delivery(table: dict[str, Any], remote: RemoteDelivery | None, delivery_process: bool) -> None:
    """In the daemon's intake process: the spooler's row and the transport rows are the delivery
    process's (or say that it is starting, or not answering)."""
    if remote is None and delivery_process:
        table["spooler"].update(status="failure", outbound=status_row.direction(True),
                                status_string="the delivery process is starting")
        spooler_complete(table["spooler"])
    if remote is not None:
        try:
            theirs = await remote.status()
        except (ConnectionError, TimeoutError):
            table["spooler"].update(status="failure", delivery="not answering", outbound=status_row.direction(True),
                                    status_string="the delivery process is not answering")
            spooler_complete(table["spooler"])
            theirs = None
        if theirs is not None:
            # The delivery process's event_subscribers is its forwarder to this process: 1 while
            # someone listens here, else 0.
            table["spooler"].update(
                status=theirs["spooler"]["status"], active=theirs["spooler"]["active"],
                stuck_returned=theirs["spooler"].get("stuck_returned", 0), alarm=theirs["spooler"].get("alarm"),
                outbound=theirs["spooler"].get("outbound", status_row.direction(True)), status_string="",
                delivery={k: theirs["spooler"].get(k) for k in ("pid", "commits", "committed_writes",
                                                                "event_subscribers")})
            spooler_complete(table["spooler"])
            table["transports"] = theirs["transports"]


def spooler_complete(row: dict[str, Any]) -> dict[str, Any]:
    """The spooler's row: its status string says whether it delivers and how much it holds."""
    if not row.get("status_string") and row["status"] == "online":
        row["status_string"] = f"delivering: {row['active']} recipients in hand"
    elif not row.get("status_string") and row["status"] == "offline":
        row["status_string"] = "not delivering in this process"
    return status_row.complete(row)


def fetch_complete(row: dict[str, Any]) -> dict[str, Any]:
    """A fetch account's row (spooler/fetch.py): an inbound transport, enabled unless stopped."""
    row["inbound"] = status_row.direction(bool(row.get("inbound", True)))
    row["outbound"] = status_row.direction(False)
    row.setdefault("counts", {"fetched": row.get("fetched", 0)})
    return status_row.complete(row)


def add_backlog(transports: list[dict[str, Any]], counts: Sequence[tuple[str, str, str, int]]) -> None:
    """Each destination's pending recipients in the store (`backlog`: by status, and `total`),
    adding rows for destinations with a backlog that delivery holds nothing of (health unknown:
    reported as up, never seen down); each transport gets its `backlog` total in `counts`."""
    by_destination: dict[tuple[str, str], dict[str, int]] = {}
    for transport, nexthop, status, n in counts:
        by_destination.setdefault((transport, nexthop), {})[status] = n
    for row in transports:
        known = {d["name"]: d for d in row["destinations"]}
        for transport, nexthop in sorted(by_destination):
            if transport == row["name"] and nexthop and nexthop not in known:
                known[nexthop] = {"name": nexthop, "status": "up", "health": "unknown", "connections": 0,
                                  "queued": 0, "delivered": 0, "deferred": 0, "failed": 0, "transactions": 0,
                                  "last_error": None}
                row["destinations"].append(known[nexthop])
        for name, dest in known.items():
            backlog = dict(by_destination.get((row["name"], name), {}))
            backlog["total"] = sum(backlog.values())
            dest["backlog"] = backlog
        row.setdefault("counts", {})["backlog"] = sum(d["backlog"]["total"] for d in row["destinations"])
