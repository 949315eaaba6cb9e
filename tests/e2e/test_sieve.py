"""Inbound hooks in `msgspool serve` as a user runs it: a Sieve script in the data directory,
mail over SMTP and from `msgspool sendmail`, filed by the delivery process after the script ran."""

from __future__ import annotations

import json
import smtplib
import urllib.request

from tests.support.daemon import Daemon, Spool
from tests.support.sink import Sink

SCRIPT = ('require ["fileinto", "vacation"];\r\n'
          'if header :contains "subject" "report" { fileinto "Reports"; stop; }\r\n'
          'vacation :days 1 "Away this week.";\r\n')


def mail(subject: str) -> str:
    return f"From: bob@example.com\r\nTo: you@localhost\r\nSubject: {subject}\r\n\r\nHello.\r\n"


def folder(daemon: Daemon, name: str) -> list[dict[str, object]]:
    """A folder of you@localhost, through the HTTP API."""
    url = f"http://127.0.0.1:{daemon.http_port}/api/queue?folder={name}&mailbox=you@localhost"
    with urllib.request.urlopen(url, timeout=5) as response:
        found: list[dict[str, object]] = json.load(response)
    return found


def test_serve_files_by_the_mailbox_script_and_answers_with_a_vacation_reply(
        spool: Spool, daemon: Daemon, relay: Sink) -> None:
    (spool.data / "msgspool.toml").write_text('[[hooks]]\nname = "filters"\ntype = "sieve"\n')
    (spool.data / "sieve").mkdir()
    (spool.data / "sieve" / "you@localhost.sieve").write_text(SCRIPT)
    relay.start()
    daemon.start()
    with smtplib.SMTP(*daemon.smtp_address, timeout=10) as client:
        client.sendmail("bob@example.com", ["you@localhost"], mail("monthly report"))
        client.sendmail("bob@example.com", ["you@localhost"], mail("hello"))
    spool.sendmail(mail("again"), "-f", "bob@example.com", "you@localhost")
    spool.wait_until(lambda: len(folder(daemon, "Reports")) == 1 and len(folder(daemon, "inbox")) == 2,
                     "the script to file all three")
    spool.wait_for_sink(relay, 1)  # one vacation reply to bob, not two
    reply = relay.messages[0]
    assert (reply.sender, reply.recipients) == ("", ["bob@example.com"])
    assert b"Away this week." in reply.content
    assert relay.count() == 1
