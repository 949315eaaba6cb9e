"""Read receipts with `msgspool serve` as a user runs it: two processes, the HTTP API and the
control socket in the intake process, delivery in the other. The MDN must still be filed into a
local requester's mailbox at once, and reach a remote requester through the relay."""

from __future__ import annotations

import json
import smtplib
import urllib.request
from typing import Any

from tests.support.daemon import Daemon, Spool
from tests.support.sink import Sink


def smtp_send(daemon: Daemon, sender: str, rcpt: str, subject: str, notify_to: str) -> None:
    content = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@localhost>\r\n"
               f"Disposition-Notification-To: {notify_to}\r\n\r\nbody\r\n")
    with smtplib.SMTP(*daemon.smtp_address, timeout=5) as client:
        client.sendmail(sender, [rcpt], content.encode())


def api(daemon: Daemon, path: str, method: str = "GET") -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/{path}", method=method,
                                     data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"} if method == "POST" else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def inbox(daemon: Daemon, mailbox: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = api(daemon, f"queue?folder=inbox&mailbox={mailbox}")
    return messages


def wait_inbox(spool: Spool, daemon: Daemon, mailbox: str, count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        messages = inbox(daemon, mailbox)
        return messages if len(messages) >= count else None

    found: list[dict[str, Any]] = spool.wait_until(enough, f"{count} messages in {mailbox}'s inbox")
    return found


def test_read_receipts_work_through_the_daemons_http_api_and_cli(spool: Spool, relay: Sink, daemon: Daemon) -> None:
    relay.start()
    daemon.start()
    smtp_send(daemon, "ann@localhost", "bob@localhost", "local", "ann@localhost")
    smtp_send(daemon, "carol@example.com", "bob@localhost", "remote", "carol@example.com")
    smtp_send(daemon, "ann@localhost", "bob@localhost", "unread", "ann@localhost")
    local, remote, unread = (m["id"] for m in wait_inbox(spool, daemon, "bob@localhost", 3))

    answer = api(daemon, f"queue/{local}/read", "POST")
    (receipt,) = wait_inbox(spool, daemon, "ann@localhost", 1)
    assert len(answer["mdn"]) == 1 and receipt["message_class"] == "REPORT.IPM.Note.IPNRN"
    assert spool.show(local)["read"] is True

    read = spool.run("queue", "read", remote)  # through the control socket
    spool.wait_for_sink(relay, 1)
    assert "read receipt (MDN) submitted" in read.stdout
    assert (relay.messages[0].sender, relay.messages[0].recipients) == ("", ["carol@example.com"])
    assert b"Disposition: manual-action/MDN-sent-manually; displayed" in relay.messages[0].content

    spool.run("queue", "delete", unread)
    receipts = wait_inbox(spool, daemon, "ann@localhost", 2)
    assert sorted(m["message_class"] for m in receipts) == ["REPORT.IPM.Note.IPNNRN", "REPORT.IPM.Note.IPNRN"]
