"""The Dovecot test peer itself (tests/support/dovecot.py): what the LMTP transport and the POP3/IMAP
fetchers are tested against. Plain clients (sockets, poplib, imaplib) prove it answers as Dovecot."""

from __future__ import annotations

import imaplib
import mailbox
import poplib
import socket

import pytest

from tests.conftest import DOVECOT_USERS
from tests.support import dovecot

MESSAGE = b"From: a@example.org\r\nSubject: peer\r\n\r\nhello\r\n"


def lmtp_session(sock: socket.socket, recipients: list[str]) -> list[bytes]:
    """A plain LMTP transaction, one command at a time; every reply line after the greeting."""
    stream = sock.makefile("rwb")

    def reply() -> bytes:
        lines = [stream.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(stream.readline())
        return b"".join(lines)

    replies = [reply()]
    for command in [b"LHLO test.example", b"MAIL FROM:<a@example.org>",
                    *[f"RCPT TO:<{r}>".encode() for r in recipients], b"DATA"]:
        stream.write(command + b"\r\n")
        stream.flush()
        replies.append(reply())
    stream.write(MESSAGE + b".\r\n")
    stream.flush()
    replies += [reply() for r in replies[3:-1] if r.startswith(b"250")]
    return replies


def test_lmtp_over_tcp_delivers_into_the_users_maildir(dovecot_server: dovecot.Dovecot) -> None:
    with socket.create_connection(("127.0.0.1", dovecot_server.lmtp_port), timeout=10) as sock:
        replies = lmtp_session(sock, ["alice@example.org", "nobody@example.org"])
    assert replies[0].startswith(b"220") and b"PIPELINING" in replies[1]
    assert replies[4].startswith(b"550 5.1.1")
    assert replies[-1].startswith(b"250 2.0.0 <alice@example.org>")
    [message] = mailbox.Maildir(dovecot_server.maildir("alice"), create=False)
    assert message["Subject"] == "peer"


def test_lmtp_over_the_unix_socket_then_pop3_and_imap_read_it(dovecot_server: dovecot.Dovecot) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(dovecot_server.lmtp_socket))
        lmtp_session(sock, ["bob@example.org"])
    pop = poplib.POP3("127.0.0.1", dovecot_server.pop3_port, timeout=10)
    pop.user("bob")
    pop.pass_(DOVECOT_USERS["bob"])
    assert pop.stat()[0] == 1
    assert b"hello" in pop.retr(1)[1]
    pop.quit()
    imap = imaplib.IMAP4("127.0.0.1", dovecot_server.imap_port, timeout=10)
    imap.login("bob", DOVECOT_USERS["bob"])
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()


def test_a_wrong_password_is_refused(dovecot_server: dovecot.Dovecot) -> None:
    pop = poplib.POP3("127.0.0.1", dovecot_server.pop3_port, timeout=10)
    pop.user("carol")
    with pytest.raises(poplib.error_proto):
        pop.pass_("not-carols")
    pop.close()


def test_stop_ends_the_server_and_removes_its_directory() -> None:
    server = dovecot.start({"dave": "pw"})
    group, directory = server.pid, server.directory
    assert group is not None
    server.stop()
    server.stop()  # idempotent
    assert not directory.exists()
    # Nothing of its process group is left. (Not "its port refuses": under xdist another worker's
    # server may bind the freed port at once; CI failed on exactly that.)
    assert dovecot.live_in_group(group) == []


def test_deliver_puts_mail_where_pop3_can_fetch_and_delete_it(dovecot_server: dovecot.Dovecot) -> None:
    dovecot_server.deliver("carol", b"Subject: one\r\n\r\n.leading dot\r\n")
    dovecot_server.deliver("carol", MESSAGE)
    pop = poplib.POP3("127.0.0.1", dovecot_server.pop3_port, timeout=10)
    pop.user("carol")
    pop.pass_(DOVECOT_USERS["carol"])
    assert pop.stat()[0] == 2
    assert pop.retr(1)[1][-1] == b".leading dot"  # through LMTP and POP3, each dot-stuffed on the wire
    assert pop.uidl()[0].startswith(b"+OK")
    pop.dele(1)
    pop.quit()
    [left] = mailbox.Maildir(dovecot_server.maildir("carol"), create=False)
    assert left["Subject"] == "peer"
    with pytest.raises(RuntimeError, match="550"):
        dovecot_server.deliver("nobody", MESSAGE)
