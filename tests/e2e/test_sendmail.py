"""`msgspool sendmail` as a user runs it: with the daemon down (the spool keeps the message until the
daemon starts) and with the daemon running (the control socket wakes it up at once). The relay is
only on `serve`'s command line: sendmail leaves routing to the daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.daemon import Daemon, DaemonFactory, Spool, describe, received_tags, run_cli, tagged_message
from tests.support.sink import Sink

PROMPT = 5.0  # "promptly": far below the scheduler's 30 s idle recheck and the 300 s first retry

MESSAGE = (
    "From: Alice <alice@example.org>\n"
    "To: Bob <bob@example.com>\n"
    "Cc: carol@example.net\n"
    "Bcc: secret-dave@example.com,\n"
    "  secret-erin@example.org\n"
    "Subject: e2e sendmail -t\n"
    "\n"
    "first line\n"
    ".\n"
    "after a lone dot\n"
)
EXPECTED = ["bob@example.com", "carol@example.net", "frank@example.com", "secret-dave@example.com",
            "secret-erin@example.org"]


def test_sendmail_with_daemon_down_spools_then_daemon_start_delivers_promptly(spool: Spool, relay: Sink,
                                                                               daemon: Daemon) -> None:
    result = spool.sendmail(MESSAGE, "-t", "-i", "-f", "bounces@example.org", "frank@example.com")
    assert result.returncode == 0

    [info] = spool.queue()
    assert info["sender"] == "bounces@example.org"
    assert info["folder"] == "outbox"
    assert sorted(r["address"] for r in info["recipients"]) == EXPECTED
    assert {r["status"] for r in info["recipients"]} == {"queued"}
    assert {r["attempts"] for r in info["recipients"]} == {0}

    relay.start()
    started = time.monotonic()
    daemon.start()
    arrived = spool.wait_for_sink(relay, 1, timeout=PROMPT)
    assert arrived - started < PROMPT, daemon.log_tail()

    [received] = relay.messages
    assert received.sender == "bounces@example.org"
    assert sorted(received.recipients) == EXPECTED  # one transaction: they share the relay
    head, _, body = received.content.partition(b"\r\n\r\n")
    assert b"bcc" not in head.lower() and b"secret-" not in head, head
    assert b"\r\nSubject: e2e sendmail -t" in b"\r\n" + head
    assert body == b"first line\r\n.\r\nafter a lone dot\r\n"  # -i: a lone dot does not end the message
    for name in (b"Date:", b"Message-ID:"):  # completed by sendmail, as Postfix's cleanup does
        assert name.lower() in head.lower(), head

    spool.wait_until(lambda: spool.queue() == [], "the delivered message to leave the outbox")
    assert relay.count() == 1


def test_sendmail_without_i_stops_at_a_lone_dot(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    spool.sendmail("Subject: dots\n\nkept\n.\nnot part of the message\n", "-f", "a@example.org", "b@example.com")
    spool.wait_for_sink(relay, 1, timeout=PROMPT)
    body = relay.messages[0].content.partition(b"\r\n\r\n")[2]
    assert body == b"kept\r\n"


def test_sendmail_while_daemon_runs_is_delivered_promptly_by_wakeup(spool: Spool, relay: Sink,
                                                                    daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    time.sleep(0.5)  # let the scheduler go idle: without a wake-up it would sleep 30 s now
    for n in (1, 2):
        submitted = time.monotonic()
        spool.sendmail(tagged_message(f"wake-{n}"), "-t")
        arrived = spool.wait_for_sink(relay, n, timeout=PROMPT)
        assert arrived - submitted < PROMPT, daemon.log_tail()
        time.sleep(0.3)
    assert received_tags(relay) == ["wake-1", "wake-2"]
    assert relay.messages[0].recipients == ["rcpt@example.com"]


def test_sendmail_dsn_options_are_stored_as_rfc_3461_requests(spool: Spool) -> None:
    spool.sendmail("Subject: dsn\n\nbody\n", "-N", "success,delay", "-R", "hdrs", "-V", "env-42",
                   "-f", "a@example.org", "b@example.com", "c@example.com")
    [info] = spool.queue()
    assert (info["ret"], info["envid"]) == ("HDRS", "env-42")
    assert [r["notify"] for r in info["recipients"]] == ["SUCCESS,DELAY", "SUCCESS,DELAY"]


def test_sendmail_refuses_a_bad_dsn_option_with_a_usage_error(spool: Spool) -> None:
    bad = spool.run("sendmail", "-N", "never,success", "b@example.com", stdin="Subject: x\n\nbody\n", ok=False)
    assert bad.returncode == 64
    assert "NOTIFY" in bad.stderr
    assert spool.run("sendmail", "-R", "some", "b@example.com", stdin="x\n", ok=False).returncode == 64


def test_sendmail_into_a_data_directory_without_a_spool_fails_with_ex_config(tmp_path: Path) -> None:
    """Issue 10.8: a mistyped --data must not make a new spool that no daemon delivers from."""
    typo = tmp_path / "mistyped"
    result = run_cli("sendmail", "b@example.com", data=typo, stdin="Subject: x\n\nbody\n")
    assert result.returncode == 78, describe(result)
    assert "no spool at" in result.stderr and "--create" in result.stderr
    assert not (typo / "spool.db").exists()
    created = run_cli("sendmail", "--create", "b@example.com", data=typo, stdin="Subject: x\n\nbody\n")
    assert created.returncode == 0, describe(created)
    assert (typo / "spool.db").exists()


def test_a_domain_route_on_an_extra_smtp_transport_wins_and_route_explains_it(spool: Spool, relay: Sink,
                                                                              daemons: DaemonFactory) -> None:
    """Issue 10.7: the built-in smtp transport takes every domain; an extra SMTP transport's domain
    route must win for its domain (it never matched before), and `msgspool route` says why."""
    partner = Sink().start()
    try:
        (spool.data / "msgspool.toml").write_text(
            f'[[transports]]\nname = "partner"\ntype = "smtp"\nrelay = "{partner.address}"\n'
            'domains = ["partner.example"]\n')
        explained = spool.run("route", "bob@partner.example", "--json")
        assert json.loads(explained.stdout)["transport"] == "partner", explained.stdout
        assert "partner.example" in json.loads(explained.stdout)["why"]
        other = spool.run("route", "bob@other.example").stdout
        assert "transport smtp" in other and "any domain" in other, other
        relay.start()
        daemon = daemons(spool.data, relay.address)
        spool.daemon = daemon
        daemon.start()
        spool.sendmail(tagged_message("to-partner", to="bob@partner.example"), "-t")
        spool.sendmail(tagged_message("to-other", to="bob@other.example"), "-t")
        spool.wait_until(lambda: received_tags(partner) == ["to-partner"] and received_tags(relay) == ["to-other"],
                         "each message at its own next hop")
    finally:
        partner.stop()
