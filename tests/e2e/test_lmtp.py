"""LMTP as a user runs it: `msgspool serve` with an lmtp transport in msgspool.toml takes mail over
SMTP and hands it to a real Dovecot over its Unix socket; `queue show` tells each recipient's own
LMTP reply, and the mail is in the user's Maildir."""

from __future__ import annotations

import mailbox
import smtplib
import time
from typing import Any

from tests.support import dovecot
from tests.support.daemon import Daemon, Spool


def test_serve_delivers_into_dovecot_over_lmtp_with_a_reply_per_recipient(spool: Spool, daemon: Daemon) -> None:
    with dovecot.start({"alice": "a", "bob": "b"}) as server:
        (spool.data / "msgspool.toml").write_text(
            f'[[transports]]\nname = "mailboxes"\ntype = "lmtp"\nsocket = "{server.lmtp_socket}"\n'
            f'domains = ["example.org"]\n')
        daemon.start()
        body = "From: app@example.net\r\nSubject: via lmtp\r\n\r\nhello\r\n"
        with smtplib.SMTP(*daemon.smtp_address, timeout=10) as client:
            client.ehlo()
            client.mail("app@example.net")
            for rcpt in ("alice@example.org", "nobody@example.org", "bob@example.org"):
                client.rcpt(rcpt)
            code, text = client.data(body.encode())
        assert code == 250, text
        message_id = text.decode().rsplit(" ", 1)[-1]

        def settled() -> dict[str, Any] | None:
            info = spool.show(message_id)
            return info if all(r["status"] in ("delivered", "failed") for r in info["recipients"]) else None

        info = spool.wait_until(settled, "every recipient's outcome", timeout=15)
        by_address = {r["address"]: r for r in info["recipients"]}
        assert [by_address[a]["status"] for a in ("alice@example.org", "nobody@example.org", "bob@example.org")] \
            == ["delivered", "failed", "delivered"]
        assert by_address["nobody@example.org"]["last_reply"].startswith("550 5.1.1 <nobody@example.org>")
        assert by_address["bob@example.org"]["last_reply"].startswith("250 2.0.0 <bob@example.org>")
        assert {r["transport"] for r in info["recipients"]} == {"mailboxes"}
        for user in ("alice", "bob"):
            deadline = time.monotonic() + 5
            while not server.maildir(user).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            [received] = list(mailbox.Maildir(server.maildir(user), create=False))
            assert received["Subject"] == "via lmtp"
        daemon.stop()
