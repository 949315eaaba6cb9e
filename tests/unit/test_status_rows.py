"""domain/status.py: the status table's rows as MAPI's status codes and strings (issue 12.8)."""

from __future__ import annotations

from msgspool.domain.status import (
    STATUS_AVAILABLE,
    STATUS_FAILURE,
    STATUS_INBOUND_ACTIVE,
    STATUS_INBOUND_ENABLED,
    STATUS_OFFLINE,
    STATUS_OUTBOUND_ACTIVE,
    STATUS_OUTBOUND_ENABLED,
    changes,
    complete,
    direction,
    snapshot,
    status_code,
    stopped,
)


def test_the_status_code_carries_mapi_s_bits_for_state_and_directions() -> None:
    assert status_code("online", direction(True, True), direction(False)) == (
        STATUS_AVAILABLE | STATUS_INBOUND_ENABLED | STATUS_INBOUND_ACTIVE)
    assert status_code("failure", direction(False), direction(True)) == (
        STATUS_AVAILABLE | STATUS_FAILURE | STATUS_OUTBOUND_ENABLED)
    assert status_code("offline", direction(False), direction(True, True)) == (
        STATUS_OFFLINE | STATUS_OUTBOUND_ENABLED | STATUS_OUTBOUND_ACTIVE)
    assert status_code("stopped", direction(False), direction(False)) == STATUS_OFFLINE


def test_a_direction_is_active_only_while_enabled() -> None:
    assert direction(False, True) == {"enabled": False, "active": False}


def test_a_row_without_a_status_string_gets_one_from_its_reason_or_what_it_does() -> None:
    assert complete({"status": "failure", "reason": "relay:25: 421 down"})["status_string"] == "relay:25: 421 down"
    assert complete({"status": "online", "outbound": direction(True, True)})["status_string"] == "sending"
    assert complete({"status": "online"})["status_string"] == "ready"
    assert complete({"status": "online", "status_string": "mine"})["status_string"] == "mine"
    row = stopped({"status": "online", "inbound": direction(True, True), "status_string": "busy"})
    assert (row["status"], row["inbound"], row["status_string"]) == (
        "stopped", {"enabled": True, "active": False}, "not running (the daemon is down)")


def test_only_a_change_of_state_or_of_an_enabled_direction_is_news() -> None:
    idle = complete({"kind": "listener", "name": "smtp", "status": "online", "inbound": direction(True)})
    seen = snapshot([idle])
    busy = complete({**idle, "inbound": direction(True, True), "status_string": ""})
    assert changes(seen, [busy]) == []  # a session opened
    draining = complete({**idle, "status": "offline", "inbound": direction(False), "status_string": ""})
    assert changes(seen, [draining]) == [draining]
    new = complete({"kind": "listener", "name": "http", "status": "online"})
    assert changes(seen, [idle, new]) == [new]
