"""Orderly shutdown and abort (issue 10.6; MAPI StoreLogoff) and honest status (10.8).

SIGTERM: new SMTP sessions are told 421 4.3.2, the transaction in flight at the next hop finishes
and its outcome is recorded, then the daemon exits — so a restart sends nothing twice. A second
SIGTERM, or `msgspool stop --abort`, cancels at once (crash-safe: the message is retried)."""

from __future__ import annotations

import signal
import smtplib
import time

import pytest

from tests.support.daemon import Daemon, DaemonFactory, Spool, received_tags, tagged_message
from tests.support.sink import Sink


def in_flight(spool: Spool, relay: Sink, tag: str) -> str:
    spool.sendmail(tagged_message(tag), "-t")
    message_id = spool.only_id()
    spool.wait_until(lambda: relay.in_data > 0, "the transaction to start")  # the sink holds its reply
    return message_id


@pytest.mark.timeout(60)
def test_sigterm_finishes_the_transaction_in_flight_records_it_and_refuses_new_sessions(
        spool: Spool, relay: Sink, daemon: Daemon) -> None:
    relay.data_delay = 4.0
    relay.start()
    daemon.start()
    in_flight(spool, relay, "drained")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(smtplib.SMTPConnectError) as caught:  # still listening, but shutting down
        smtplib.SMTP(*daemon.smtp_address, timeout=5)
    assert caught.value.smtp_code == 421 and b"4.3.2" in caught.value.smtp_error
    assert daemon.proc.wait(15) == 0  # one SIGTERM only: a second one would abort
    daemon.proc = None
    assert received_tags(relay) == ["drained"]
    assert spool.queue() == [], "the outcome was not recorded before the exit"
    assert "stopped" in daemon.log()
    daemon.start()  # nothing was left active: a restart sends nothing again
    time.sleep(1.0)
    assert received_tags(relay) == ["drained"]
    assert spool.queue() == []


@pytest.mark.timeout(60)
def test_stop_abort_cancels_the_transaction_at_once_and_the_message_is_retried(spool: Spool, relay: Sink,
                                                                             daemon: Daemon) -> None:
    relay.data_delay = 5.0
    relay.start()
    daemon.start()
    in_flight(spool, relay, "aborted")
    started = time.monotonic()
    result = spool.run("stop", "--abort")
    assert "stopped" in result.stdout
    assert time.monotonic() - started < 4.0, "abort waited for the transaction"
    assert daemon.proc is not None and daemon.proc.wait(5) == 0
    daemon.proc = None
    table = spool.status()  # the daemon is down: every row says so, the counts are still there
    assert table["spooler"]["status"] == "stopped"
    assert all(row["status"] == "stopped" for row in table["transports"]), table
    assert table["queue"]["messages"] == 1, table
    relay.data_delay = 0.0
    daemon.start()
    spool.wait_until(lambda: "aborted" in received_tags(relay) and spool.queue() == [], "the retry", timeout=15)


def test_stop_without_a_daemon_says_so(spool: Spool) -> None:
    result = spool.run("stop", ok=False)
    assert result.returncode == 1 and "no daemon runs" in result.stderr


def test_destination_counters_count_what_happened(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    spool.sendmail(tagged_message("mixed", to="fail4xx-a@example.com, fail4xx-b@example.com, ok@example.com"), "-t")
    spool.wait_until(lambda: received_tags(relay) == ["mixed"], "the delivery")

    def counters() -> dict[str, int] | None:
        for row in spool.status()["transports"]:
            for dest in row["destinations"]:
                if dest["delivered"] + dest["deferred"] >= 3:
                    return {k: dest[k] for k in ("delivered", "deferred", "failed")}
        return None

    assert spool.wait_until(counters, "the counters") == {"delivered": 1, "deferred": 2, "failed": 0}


def test_node_drain_without_a_daemon_exits_75(spool: Spool) -> None:
    result = spool.run("node", "drain", ok=False)
    assert result.returncode == 75 and "no daemon runs" in result.stderr


@pytest.mark.timeout(60)
def test_node_drain_stops_this_daemon_in_order_after_the_transaction_in_flight(spool: Spool, relay: Sink,
                                                                               daemon: Daemon) -> None:
    relay.data_delay = 4.0
    relay.start()
    daemon.start()
    in_flight(spool, relay, "drained")
    result = spool.run("node", "drain")
    assert "drained and stopped" in result.stdout
    assert daemon.proc is not None and daemon.proc.wait(5) == 0
    daemon.proc = None
    assert received_tags(relay) == ["drained"] and spool.queue() == []
    assert spool.status()["nodes"] == []  # the node retired


@pytest.mark.timeout(60)
def test_status_lists_the_node_and_node_drain_owner_makes_it_stop_at_its_next_heartbeat(
        spool: Spool, relay: Sink, daemons: DaemonFactory) -> None:
    relay.data_delay = 4.0
    relay.start()
    (spool.data / "msgspool.toml").write_text("lease_time = 2.0\n")
    daemon = daemons(spool.data, relay.address)
    spool.daemon = daemon
    daemon.start()
    [node] = spool.wait_until(lambda: spool.status()["nodes"], "the delivery node to register")
    assert node["alive"] is True and node["draining"] is False and node["leases"] == 0, node
    assert daemon.proc is not None and node["host"] and node["pid"] != daemon.proc.pid, node  # the delivery process
    text = spool.run("status").stdout
    line = next(line for line in text.splitlines() if line.startswith("node "))
    assert node["owner"] in line and f"pid={node['pid']}" in line and "alive" in line and "heartbeat=" in line, text
    unknown = spool.run("node", "drain", "--owner", "nobody-0-0", ok=False)
    assert unknown.returncode == 1 and "no live node" in unknown.stderr
    in_flight(spool, relay, "drained-by-owner")
    started = time.monotonic()
    result = spool.run("node", "drain", "--owner", node["owner"][:-8])  # a unique start of the name will do
    assert node["owner"] in result.stdout and "drained and stopped" in result.stdout
    assert time.monotonic() - started < 15.0
    assert daemon.proc is not None and daemon.proc.wait(10) == 0  # the whole daemon stopped, as on SIGTERM
    daemon.proc = None
    assert received_tags(relay) == ["drained-by-owner"] and spool.queue() == []
    assert spool.status()["nodes"] == []
