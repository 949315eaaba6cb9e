"""Issue 12.8, the status table complete, through a real daemon: `msgspool status --json` and
`GET /api/status` have a row for the spooler, each transport (with its destinations' health and
backlog) and each listener (SMTP, HTTP, sendmail intake), each with its state, inbound and
outbound enabled/active, counts, a status string and MAPI's status code; changes of a row come as
`transport_status` events over SSE. The fields of before stay (DESIGN.md: add, do not rename)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from typing import Any

from msgspool.domain.status import (
    STATUS_AVAILABLE,
    STATUS_INBOUND_ENABLED,
    STATUS_OFFLINE,
    STATUS_OUTBOUND_ENABLED,
)
from tests.support.daemon import Daemon, Spool, port_open, tagged_message
from tests.support.sink import Sink
from tests.support.sse import SseClient

ROW_FIELDS = {"name", "kind", "status", "inbound", "outbound", "counts", "status_string", "status_code"}
SPOOLER_FIELDS = {"pid", "started_at", "active", "commits", "committed_writes", "event_subscribers",
                  "stuck_returned", "alarm"}  # as before issue 12.8
TRANSPORT_FIELDS = {"addrtypes", "reason", "destinations"}
DESTINATION_FIELDS = {"name", "status", "connections", "queued", "delivered", "deferred", "failed", "last_error",
                      "health", "backlog"}


def rows_of(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [table["spooler"], *table["transports"], *table["listeners"], *table.get("fetch", [])]
    for row in rows:
        assert row.keys() >= ROW_FIELDS, (row["name"], ROW_FIELDS - row.keys())
        assert row["status"] in ("online", "offline", "failure", "stopped"), row
        for direction in ("inbound", "outbound"):
            assert set(row[direction]) == {"enabled", "active"}, row
    return {f"{row['kind']}:{row['name']}": row for row in rows}


def test_status_has_a_row_for_the_spooler_each_transport_and_each_listener(spool: Spool, relay: Sink,
                                                                           daemon: Daemon) -> None:
    spool.sendmail(tagged_message("waiting"), "-t")  # the relay is down: a backlog at its destination
    down = rows_of(spool.status())
    assert down["spooler:spooler"]["status"] == "stopped"
    assert down["spooler:spooler"]["status_code"] & STATUS_OFFLINE
    # With the daemon down, the listeners its configuration names (serve's --smtp/--http are not known).
    assert (down["listener:smtp"]["status"], down["listener:smtp"]["address"]) == ("stopped", "127.0.0.1:2525")
    assert down["listener:http"]["status"] == "stopped"
    assert down["listener:sendmail"]["status"] == "online", down["listener:sendmail"]  # works with the daemon down
    assert down["transport:smtp"]["destinations"] == []  # sendmail leaves routing to the daemon

    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    spool.wait_until(lambda: any(d["health"] == "down" for d in rows_of(spool.status())["transport:smtp"]
                                 ["destinations"]), "the relay's destination to be found down")
    table = spool.status()
    rows = rows_of(table)
    spooler = rows["spooler:spooler"]
    assert spooler.keys() >= SPOOLER_FIELDS and spooler["status"] == "online", spooler
    assert spooler["outbound"]["enabled"] and spooler["inbound"]["enabled"]
    assert spooler["status_code"] & (STATUS_AVAILABLE | STATUS_OUTBOUND_ENABLED) == \
        STATUS_AVAILABLE | STATUS_OUTBOUND_ENABLED
    smtp = rows["transport:smtp"]
    assert smtp.keys() >= TRANSPORT_FIELDS and smtp["status"] == "failure", smtp
    assert smtp["status_string"] == smtp["reason"] and relay.address in smtp["reason"]
    assert smtp["outbound"] == {"enabled": True, "active": False} and smtp["inbound"]["enabled"] is False
    assert smtp["counts"]["backlog"] == 1 and smtp["counts"]["destinations_down"] == 1, smtp["counts"]
    [dest] = smtp["destinations"]
    assert dest.keys() >= DESTINATION_FIELDS and (dest["health"], dest["status"]) == ("down", "down"), dest
    assert dest["backlog"] == {"deferred": 1, "total": 1}, dest
    for name, port in (("smtp", daemon.smtp_port), ("http", daemon.http_port)):
        row = rows[f"listener:{name}"]
        assert (row["status"], row["address"], row["inbound"]["enabled"]) == ("online", f"127.0.0.1:{port}", True)
        assert row["status_code"] & STATUS_INBOUND_ENABLED and not row["outbound"]["enabled"]
    assert rows["listener:smtp"]["counts"]["sessions"] >= 1  # the test's own port checks
    assert rows["listener:sendmail"]["status"] == "online" and rows["listener:sendmail"]["counts"]["bytes_free"] > 0

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http_port}/api/status", timeout=10) as response:
        api = json.loads(response.read())
    api_rows = rows_of(api)
    assert api_rows.keys() == rows.keys()
    assert api_rows["listener:http"]["counts"]["requests_open"] == 1  # this request
    assert api_rows["listener:http"]["inbound"]["active"] is True

    relay.start()
    spool.wait_for_sink(relay, 1)
    spool.wait_until(lambda: rows_of(spool.status())["transport:smtp"]["status"] == "online", "the transport online")
    after = rows_of(spool.status())["transport:smtp"]
    assert after["counts"]["delivered"] == 1 and after["counts"]["backlog"] == 0, after
    assert after["status_string"] == "ready"
    text = spool.run("status").stdout
    assert "listener   smtp       online   in=on" in text and "listener   sendmail" in text, text
    assert "transport  smtp       online   in=off out=on" in text, text


def test_a_row_that_changes_is_pushed_as_a_transport_status_event(spool: Spool, relay: Sink,
                                                                  daemon: Daemon) -> None:
    """The delivery process dies: the spooler's row is in failure (or offline) until the daemon
    has started a new one, and each change reaches an SSE client as it happens."""
    relay.start()
    daemon.start()
    spool.wait_until(lambda: port_open("127.0.0.1", daemon.http_port), "the HTTP listener")
    delivery_pid = spool.status()["spooler"]["delivery"]["pid"]
    events = SseClient(daemon.http_port, "types=transport_status").opened()
    try:
        time.sleep(1.5)  # the watcher has had its first look
        os.kill(delivery_pid, signal.SIGKILL)

        def spooler_changes() -> list[dict[str, Any]]:
            return [e.data for e in events.received() if e.data.get("kind") == "spooler"]

        spool.wait_until(lambda: any(c["status"] != "online" for c in spooler_changes()),
                         "an event: the spooler's row left online")
        spool.wait_until(lambda: spooler_changes() and spooler_changes()[-1]["status"] == "online",
                         "an event: the spooler's row online again", timeout=20)
        first = next(c for c in spooler_changes() if c["status"] != "online")
        assert (first["row"], first["previous"]) == ("spooler:spooler", "online"), first
        assert first["status_string"] and isinstance(first["status_code"], int)
        assert spool.status()["spooler"]["delivery"]["pid"] != delivery_pid
    finally:
        events.close()
    spool.sendmail(tagged_message("after"), "-t")
    spool.wait_for_sink(relay, 1)
