"""The IDLE wait (transports/imap.py) against a scripted IMAP server on a loopback socket, for
what Dovecot does only by chance of timing: news that comes in the same segment as the "+" that
starts the wait, or ahead of it (mail that arrived between the poll's UID SEARCH and the IDLE).
Either must end the wait at once, not at its renewal (seen in CI: 120 s)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from msgspool.domain.fetch import FetchAccount
from msgspool.transports.imap import _IMAP4, IMAPSession


class Scripted:
    """Greets, answers CAPABILITY with IDLE, and answers IDLE with `idle_reply` sent in one
    segment; after DONE, the tagged OK."""

    def __init__(self, idle_reply: bytes) -> None:
        self.idle_reply = idle_reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"* OK scripted ready\r\n")
            idle_tag = b""
            for line in lines:
                tag, _, command = line.strip().partition(b" ")
                if line.strip() == b"DONE":
                    conn.sendall(idle_tag + b" OK IDLE done\r\n")
                elif command.upper() == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + tag + b" OK done\r\n")
                elif command.upper() == b"IDLE":
                    idle_tag = tag
                    conn.sendall(self.idle_reply)
                elif command.upper() == b"LOGOUT":
                    conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                    return


def account(port: int) -> FetchAccount:
    return FetchAccount(name="scripted", protocol="imap", host="127.0.0.1", port=port, security="none",
                        user="u", password_file="/nonexistent", mailbox="u@localhost", idle=True)


@pytest.mark.parametrize("reply", [b"+ idling\r\n* 2 EXISTS\r\n", b"* 2 EXISTS\r\n+ idling\r\n"],
                         ids=["with-the-plus", "ahead-of-the-plus"])
def test_news_that_comes_with_the_start_of_idle_ends_the_wait_at_once(reply: bytes) -> None:
    server = Scripted(reply)
    imap = _IMAP4("127.0.0.1", server.port, timeout=10)
    session = IMAPSession(account(server.port), imap, "1")
    assert session.can_wait
    start = time.monotonic()
    assert session.wait(20.0, threading.Event()) is True
    assert time.monotonic() - start < 2.0
    session.close()


def test_a_wait_without_news_ends_at_its_timeout_or_at_stop() -> None:
    server = Scripted(b"+ idling\r\n")
    imap = _IMAP4("127.0.0.1", server.port, timeout=10)
    session = IMAPSession(account(server.port), imap, "1")
    start = time.monotonic()
    assert session.wait(0.6, threading.Event()) is False
    assert 0.5 <= time.monotonic() - start < 2.0
    session.close()
