"""Issue 12.7 through the CLI, a daemon and its HTTP API: `queue flush --destination HOST` and
`--transport NAME` flush one destination (Postfix `postqueue -s SITE`), and a transport put
`offline` takes no work until it is `online` again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.daemon import Daemon, DaemonFactory, Spool, post, received_tags, tagged_message
from tests.support.sink import Sink
from tests.support.sse import SseClient

PROMPT = 5.0


@pytest.fixture
def partner() -> Iterator[Sink]:
    """The next hop of a second SMTP transport, `partner`, for the domain partner.example."""
    sink = Sink().start()
    yield sink
    sink.stop()


@pytest.fixture
def two_routes(spool: Spool, relay: Sink, partner: Sink, daemons: DaemonFactory) -> Daemon:
    """A daemon with the built-in `smtp` transport on `relay` and `partner` on its own sink."""
    (spool.data / "msgspool.toml").write_text(
        f'[[transports]]\nname = "partner"\ntype = "smtp"\nrelay = "{partner.address}"\n'
        'domains = ["partner.example"]\n')
    daemon = daemons(spool.data, relay.address)
    spool.daemon = daemon
    return daemon


def attempts_of(spool: Spool, message_id: str) -> int:
    [r] = spool.show(message_id)["recipients"]
    return int(r["attempts"]) if r["status"] == "deferred" else -1


def test_flush_of_one_destination_or_transport_retries_only_its_recipients(
        spool: Spool, relay: Sink, partner: Sink, two_routes: Daemon) -> None:
    relay.start()
    two_routes.start()
    spool.sendmail(tagged_message("busy-main", to="fail4xx-a@example.com"), "-t")
    spool.sendmail(tagged_message("busy-partner", to="fail4xx-b@partner.example"), "-t")
    by_transport = {m["recipients"][0]["address"]: m["id"] for m in spool.queue()}
    main, other = by_transport["fail4xx-a@example.com"], by_transport["fail4xx-b@partner.example"]
    spool.wait_until(lambda: attempts_of(spool, main) == 1 and attempts_of(spool, other) == 1,
                     "the first attempts to be deferred (minutes until the next)")

    flushed = spool.run("queue", "flush", "--destination", partner.address)
    assert flushed.stdout == "1 recipients due now\n", flushed.stdout
    spool.wait_until(lambda: attempts_of(spool, other) == 2, "a second attempt at the flushed destination",
                     timeout=PROMPT)
    assert attempts_of(spool, main) == 1, "a destination that was not flushed was retried"

    assert spool.run("queue", "flush", "--transport", "smtp").stdout == "1 recipients due now\n"
    spool.wait_until(lambda: attempts_of(spool, main) == 2, "a second attempt of the flushed transport",
                     timeout=PROMPT)
    assert attempts_of(spool, other) == 2

    status, body = post(two_routes, f"/api/queue/flush?destination={partner.address}")
    assert (status, body) == (200, {"ok": True, "flushed": 1}), body
    spool.wait_until(lambda: attempts_of(spool, other) == 3, "a third attempt after POST /api/queue/flush",
                     timeout=PROMPT)
    status, body = post(two_routes, "/api/queue/flush", {"transport": "smtp", "destination": partner.address})
    assert (status, body) == (200, {"ok": True, "flushed": 0}), body  # partner's nexthop is not smtp's
    assert attempts_of(spool, main) == 2

    unknown = spool.run("queue", "flush", "--transport", "nosuch", ok=False)
    assert unknown.returncode == 1 and "no transport nosuch (known: smtp, partner)" in unknown.stderr, unknown
    status, body = post(two_routes, "/api/queue/flush", {"transport": "nosuch"})
    assert status == 404 and "no transport nosuch" in body["detail"], body
    both = spool.run("queue", "flush", main, "--transport", "smtp", ok=False)
    assert both.returncode == 2, both


def test_flush_of_one_destination_works_with_the_daemon_down(spool: Spool, relay: Sink, partner: Sink,
                                                             two_routes: Daemon) -> None:
    relay.start()
    two_routes.start()
    spool.sendmail(tagged_message("busy-partner", to="fail4xx-b@partner.example"), "-t")
    message_id = spool.only_id()
    spool.wait_until(lambda: attempts_of(spool, message_id) == 1, "the first attempt to be deferred")
    two_routes.stop()
    assert spool.run("queue", "flush", "--destination", "elsewhere:25").stdout == "0 recipients due now\n"
    assert spool.run("queue", "flush", "--destination", partner.address).stdout == "1 recipients due now\n"
    two_routes.start()
    spool.wait_until(lambda: attempts_of(spool, message_id) == 2, "the attempt the flush made due", timeout=PROMPT)


def transport_row(spool: Spool, name: str) -> dict[str, Any]:
    [row] = [t for t in spool.status()["transports"] if t["name"] == name]
    return row


def test_an_offline_transport_takes_no_work_across_a_restart_until_online_releases_its_backlog(
        spool: Spool, relay: Sink, partner: Sink, two_routes: Daemon) -> None:
    relay.start()
    two_routes.start()
    went = spool.run("transport", "offline", "partner")
    assert went.stdout == "transport partner is offline\n", went.stdout
    assert spool.run("transport", "offline", "partner").stdout == "transport partner was offline already\n"
    spool.sendmail(tagged_message("waits", to="bob@partner.example"), "-t")
    spool.sendmail(tagged_message("goes", to="carol@example.com"), "-t")
    spool.wait_for_sink(relay, 1)  # another transport is not held up
    waiting = next(m["id"] for m in spool.queue() if m["recipients"][0]["address"] == "bob@partner.example")
    [r] = spool.show(waiting)["recipients"]
    assert (r["status"], r["attempts"], r["last_reply"]) == ("deferred", 0, "421 4.3.2 transport partner is offline"), r
    row = transport_row(spool, "partner")
    assert (row["status"], row["offline"], row["reason"].startswith("transport partner is offline")) == (
        "offline", True, True), row
    assert transport_row(spool, "smtp")["status"] == "online"

    two_routes.stop()  # the flag is in the spool: a restart keeps it
    stopped = transport_row(spool, "partner")
    assert (stopped["status"], stopped["offline"]) == ("stopped", True), stopped
    two_routes.start()
    assert spool.run("queue", "flush").returncode == 0  # a flush does not lift an operator's offline
    time.sleep(1.0)
    assert partner.connections == 0 and partner.count() == 0, "an offline transport connected"
    assert transport_row(spool, "partner")["status"] == "offline"

    events = SseClient(two_routes.http_port, "types=transport_status").opened()
    try:
        started = time.monotonic()
        status, body = post(two_routes, "/api/transports/partner/online")
        assert (status, body) == (200, {"ok": True, "transport": "partner", "status": "online", "changed": True,
                                        "released": 1}), body
        spool.wait_for_sink(partner, 1, timeout=PROMPT)
        assert time.monotonic() - started < PROMPT
        [event] = [e for e in events.wait_for(1) if e.data.get("transport") == "partner"]
        assert (event.type, event.data["status"], event.data["released"]) == ("transport_status", "online", 1)
    finally:
        events.close()
    assert received_tags(partner) == ["waits"]
    assert transport_row(spool, "partner")["offline"] is False


def test_a_transport_put_offline_with_the_daemon_down_is_offline_when_it_starts(
        spool: Spool, relay: Sink, partner: Sink, two_routes: Daemon) -> None:
    relay.start()
    spool.sendmail(tagged_message("queued-first", to="bob@partner.example"), "-t")
    assert spool.run("transport", "offline", "partner", "--json").stdout.strip() == json.dumps(
        {"transport": "partner", "status": "offline", "changed": True, "released": 0})
    two_routes.start()
    message_id = spool.only_id()
    spool.wait_until(lambda: spool.show(message_id)["recipients"][0]["last_reply"] ==
                     "421 4.3.2 transport partner is offline", "the message to wait for its offline transport")
    assert partner.connections == 0
    assert spool.run("transport", "online", "partner").stdout == \
        "transport partner is online; 1 waiting recipients due now\n"
    spool.wait_for_sink(partner, 1, timeout=PROMPT)

    unknown = spool.run("transport", "offline", "nosuch", ok=False)
    assert unknown.returncode == 1 and "no transport nosuch (known: smtp, partner)" in unknown.stderr, unknown
    status, body = post(two_routes, "/api/transports/nosuch/offline")
    assert status == 404 and "no transport nosuch" in body["detail"], body


def test_a_transport_left_offline_and_then_removed_from_the_configuration_can_be_put_online(
        spool: Spool, relay: Sink, partner: Sink, two_routes: Daemon) -> None:
    spool.sendmail(tagged_message("makes-the-spool"), "-t")
    assert spool.run("transport", "offline", "partner").returncode == 0
    (spool.data / "msgspool.toml").write_text("")  # partner is gone from the configuration
    assert transport_row(spool, "smtp")["offline"] is False
    assert spool.run("transport", "offline", "partner", ok=False).returncode == 1  # unknown now
    assert spool.run("transport", "online", "partner").stdout.startswith("transport partner is online")
    assert spool.run("transport", "online", "partner", ok=False).returncode == 1  # and now it is gone
