"""The LMTP transport (RFC 2033) against a real Dovecot LMTP server (tests/support/dovecot.py):
per-recipient replies after the content, over TCP and a Unix socket, one connection for several
messages, and the mail read back from the users' Maildirs with Python's `mailbox`."""

from __future__ import annotations

import asyncio
import mailbox
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from msgspool.config import Settings
from msgspool.domain.dsn import Handoff
from msgspool.domain.message import Message, Recipient
from msgspool.errors import ConfigError, DestinationUnavailable
from msgspool.spooler.intake import Submission
from msgspool.transports.lmtp import LMTPTransport
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import wait_status
from tests.integration.test_reports import inbox as reports_inbox
from tests.support import dovecot
from tests.support.sink import free_port

CONTENT = b"From: app@example.org\r\nSubject: lmtp test\r\n\r\nHello.\r\n.a line with a leading dot\r\n"


def transport(**options: Any) -> LMTPTransport:
    return LMTPTransport("lmtp", Settings(hostname="spool.test"), {"connect_timeout": 5, **options})


def message(*addresses: str, content: bytes = CONTENT, id: str = "LMTP1") -> Message:
    return Message(id=id, sender="app@example.org", content=content, submitted_at=time.time(),
                   recipients=[Recipient(a, index=i) for i, a in enumerate(addresses)])


def inbox(server: dovecot.Dovecot, user: str) -> list[mailbox.MaildirMessage]:
    path = server.maildir(user)
    return list(mailbox.Maildir(path, create=False)) if path.exists() else []


async def test_each_recipient_gets_its_own_reply_after_the_content(dovecot_server: dovecot.Dovecot) -> None:
    lmtp = transport(host=f"127.0.0.1:{dovecot_server.lmtp_port}")
    msg = message("alice@example.org", "nobody@example.org", "bob@example.org")
    conn = await lmtp.connect(lmtp.nexthop("alice@example.org"))
    try:
        replies = await conn.send(msg, msg.recipients)
    finally:
        await conn.close()
    assert [r.code for r in replies] == [250, 550, 250]
    assert replies[0].text.startswith("<alice@example.org>") and replies[0].text.endswith("Saved")
    assert replies[2].text.startswith("<bob@example.org>")  # bob's own reply, not alice's
    assert (replies[1].enhanced, replies[1].text) == ("5.1.1", "<nobody@example.org> User doesn't exist:"
                                                      " nobody@example.org")
    assert conn.handoff is Handoff.FINAL  # Dovecot offers no DSN: the mailbox is the end of the line
    for user in ("alice", "bob"):
        [received] = inbox(dovecot_server, user)
        assert received["Subject"] == "lmtp test"
        assert received.get_payload() == "Hello.\n.a line with a leading dot\n"  # dot-stuffed, unstuffed
    assert inbox(dovecot_server, "carol") == []


async def test_over_the_unix_socket(dovecot_server: dovecot.Dovecot) -> None:
    lmtp = transport(socket=str(dovecot_server.lmtp_socket))
    assert lmtp.nexthop("carol@example.org") == f"unix:{dovecot_server.lmtp_socket}"
    conn = await lmtp.connect(lmtp.nexthop("carol@example.org"))
    try:
        [reply] = await conn.send(message("carol@example.org"), message("carol@example.org").recipients)
    finally:
        await conn.close()
    assert reply.code == 250 and conn.remote == f"unix:{dovecot_server.lmtp_socket}"
    assert [m["Subject"] for m in inbox(dovecot_server, "carol")] == ["lmtp test"]


async def test_one_connection_carries_several_messages(dovecot_server: dovecot.Dovecot) -> None:
    lmtp = transport(host=f"127.0.0.1:{dovecot_server.lmtp_port}")
    conn = await lmtp.connect(lmtp.nexthop("alice@example.org"))
    try:
        for n in range(3):
            msg = message("alice@example.org", content=CONTENT.replace(b"lmtp test", f"n{n}".encode()), id=f"M{n}")
            assert [r.code for r in await conn.send(msg, msg.recipients)] == [250]
        assert conn.usable
    finally:
        await conn.close()
    assert sorted(m["Subject"] for m in inbox(dovecot_server, "alice")) == ["n0", "n1", "n2"]
    assert dovecot_server.log().count("Connect from 127.0.0.1") == 2  # the readiness probe, then ours


async def test_a_session_the_server_dropped_is_opened_again(dovecot_server: dovecot.Dovecot) -> None:
    lmtp = transport(socket=str(dovecot_server.lmtp_socket))
    conn = await lmtp.connect(lmtp.nexthop("bob@example.org"))
    try:
        msg = message("bob@example.org")
        assert [r.code for r in await conn.send(msg, msg.recipients)] == [250]
        conn.client.close()  # as an idle timeout on the server's side would
        assert [r.code for r in await conn.send(msg, msg.recipients)] == [250]
    finally:
        await conn.close()
    assert len(inbox(dovecot_server, "bob")) == 2


async def test_a_dead_server_is_destination_unavailable(tmp_path: Path) -> None:
    for lmtp in (transport(host=f"127.0.0.1:{free_port()}"), transport(socket=str(tmp_path / "no-such-socket"))):
        with pytest.raises(DestinationUnavailable) as caught:
            await lmtp.connect(lmtp.nexthop("alice@example.org"))
        assert caught.value.reply.code == 421 and caught.value.reply.enhanced == "4.4.1"


def test_settings_need_one_socket_or_host() -> None:
    for options in ({}, {"socket": "/run/lmtp", "host": "127.0.0.1"}):
        with pytest.raises(ConfigError, match="exactly one of socket"):
            transport(**options)
    assert transport(host="mail.internal").nexthop("x@example.org") == "mail.internal:24"
    assert transport(host="[::1]:2003").nexthop("x@example.org") == "[::1]:2003"
    assert transport(host="unix:/run/lmtp").nexthop("x@example.org") == "unix:/run/lmtp"
    assert transport(host="h", data_done_timeout=7).timeouts.data_done == 7.0
    with pytest.raises(ConfigError, match="rcpt_timeout"):
        transport(host="h", rcpt_timeout="soon")


async def test_the_spooler_delivers_through_lmtp_and_reports_the_unknown_user(
        spooler_factory: SpoolerFactory, dovecot_server: dovecot.Dovecot) -> None:
    lmtp = {"name": "mailboxes", "type": "lmtp", "socket": str(dovecot_server.lmtp_socket),
            "domains": ["example.org"]}
    async with spooler_factory(transports=[lmtp]) as spooler:
        message_id = await spooler.submit(Submission(sender="app@localhost", content=CONTENT,
                                                     recipients=["alice@example.org", "nobody@example.org"]))
        info = await wait_status(spooler, message_id, {"delivered", "failed"})
        [ndr] = await reports_inbox(spooler, "app@localhost", 1)
        report = message_from_bytes(await spooler.content(ndr["id"]) or b"")
        # A local server's "no such user" is no bounce from afar: the user may be made tomorrow.
        assert await spooler.store.suppressions(time.time()) == []
    by_address = {r["address"]: r for r in info["recipients"]}
    assert by_address["alice@example.org"]["status"] == "delivered"
    assert by_address["alice@example.org"]["transport"] == "mailboxes"
    assert by_address["nobody@example.org"]["status"] == "failed"
    assert by_address["nobody@example.org"]["last_reply"].startswith("550 5.1.1 <nobody@example.org> User doesn't")
    [received] = inbox(dovecot_server, "alice")
    assert received["Subject"] == "lmtp test"
    assert b"Final-Recipient: rfc822; nobody@example.org" in report.as_bytes()
    assert b"Action: failed" in report.as_bytes()
    assert b"Final-Recipient: rfc822; alice@example.org" not in report.as_bytes()  # delivered: not reported


async def test_a_full_mailbox_defers_only_its_recipient(spooler_factory: SpoolerFactory) -> None:
    big = CONTENT + (b"y" * 76 + b"\r\n") * 40  # over carol's 1K
    with dovecot.start({"alice": "a", "carol": "c"}, quotas={"carol": "1K"}) as server:
        lmtp = {"name": "mailboxes", "type": "lmtp", "host": f"127.0.0.1:{server.lmtp_port}",
                "domains": ["example.org"]}
        async with spooler_factory(transports=[lmtp]) as spooler:
            message_id = await spooler.submit(Submission(sender="app@localhost", content=big,
                                                         recipients=["carol@example.org", "alice@example.org"]))
            info = await wait_status(spooler, message_id, {"delivered", "deferred"})
        by_address = {r["address"]: r for r in info["recipients"]}
        assert by_address["alice@example.org"]["status"] == "delivered"
        assert by_address["carol@example.org"]["status"] == "deferred"
        assert by_address["carol@example.org"]["last_reply"] == \
            "452 4.2.2 <carol@example.org> Quota exceeded (mailbox for user is full)"
        assert len(inbox(server, "alice")) == 1 and inbox(server, "carol") == []


class ScriptedLMTP:
    """A loopback LMTP peer for what Dovecot will not do on demand: advertise DSN, or hang up after
    answering the first recipient. It records every command line it is sent."""

    def __init__(self, *, dsn: bool = False, pipelining: bool = True, hang_up_after: int | None = None) -> None:
        self.dsn, self.pipelining, self.hang_up_after = dsn, pipelining, hang_up_after
        self.pipelined = False  # a command arrived before the reply to the one before it
        self.commands: list[str] = []

    async def __aenter__(self) -> ScriptedLMTP:
        self.server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted LMTP\r\n")
        rcpts: list[str] = []
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            self.commands.append(line)
            self.pipelined |= bool(getattr(reader, "_buffer", b""))
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "LHLO":
                writer.write(b"250-scripted\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                             + (b"250-DSN\r\n" if self.dsn else b"") + b"250 ENHANCEDSTATUSCODES\r\n")
            elif verb == "RCPT" and line.startswith("RCPT TO:<no-"):
                writer.write(b"550 5.1.1 no such user\r\n")
            elif verb == "RCPT":
                rcpts.append(line[9:line.index(">")])
                writer.write(b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                while (await reader.readline()) != b".\r\n":
                    pass
                for n, rcpt in enumerate(rcpts):
                    if n == self.hang_up_after:
                        writer.close()
                        return
                    writer.write(f"250 2.0.0 <{rcpt}> saved\r\n".encode())
                rcpts = []
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 2.0.0 OK\r\n")
            await writer.drain()
        writer.close()


async def test_a_connection_lost_among_the_replies_defers_only_the_unanswered() -> None:
    async with ScriptedLMTP(hang_up_after=1) as peer:
        lmtp = transport(host=f"127.0.0.1:{peer.port}")
        conn = await lmtp.connect(lmtp.nexthop("a@example.org"))
        msg = message("a@example.org", "b@example.org", "c@example.org")
        replies = await conn.send(msg, msg.recipients)
        await conn.close()
    assert replies[0].line() == "250 2.0.0 <a@example.org> saved"  # delivered: never sent again
    assert [(r.code, r.enhanced) for r in replies[1:]] == [(421, "4.4.2")] * 2  # unknown: deferred
    assert not conn.usable


async def test_dsn_parameters_go_to_a_server_that_offers_dsn() -> None:
    from msgspool.domain.dsn import MessageDSN, Notify, RecipientDSN, Ret

    async with ScriptedLMTP(dsn=True) as peer:
        lmtp = transport(host=f"127.0.0.1:{peer.port}")
        conn = await lmtp.connect(lmtp.nexthop("a@example.org"))
        msg = message("a@example.org")
        msg.dsn = MessageDSN(ret=Ret.HDRS, envid="ENV1")
        msg.recipients[0].dsn = RecipientDSN(notify=frozenset({Notify.SUCCESS}))
        assert [r.code for r in await conn.send(msg, msg.recipients)] == [250]
        assert [r.code for r in await conn.send(msg, msg.recipients)] == [250]
        await conn.close()
    assert conn.handoff is Handoff.DSN_RELAY
    assert peer.commands[0] == "LHLO spool.test"
    mail = [c for c in peer.commands if c.startswith("MAIL")]
    assert "RET=HDRS" in mail[0] and "ENVID=ENV1" in mail[0]
    assert next(c for c in peer.commands if c.startswith("RCPT")) == \
        "RCPT TO:<a@example.org> NOTIFY=SUCCESS ORCPT=rfc822;a@example.org"
    assert peer.commands.count("RSET") == 1  # before the second message on the same connection


async def test_without_pipelining_commands_go_one_at_a_time() -> None:
    async with ScriptedLMTP(pipelining=False) as peer:
        lmtp = transport(host=f"127.0.0.1:{peer.port}")
        conn = await lmtp.connect(lmtp.nexthop("a@example.org"))
        msg = message("a@example.org", "no-b@example.org", "c@example.org")
        replies = await conn.send(msg, msg.recipients)
        await conn.close()
    assert [r.line() for r in replies] == ["250 2.0.0 <a@example.org> saved", "550 5.1.1 no such user",
                                           "250 2.0.0 <c@example.org> saved"]
    assert not peer.pipelined
    async with ScriptedLMTP() as peer:  # the same with PIPELINING: one write for MAIL, RCPTs and DATA
        lmtp = transport(host=f"127.0.0.1:{peer.port}")
        conn = await lmtp.connect(lmtp.nexthop("a@example.org"))
        assert [r.code for r in await conn.send(msg, msg.recipients)] == [250, 550, 250]
        await conn.close()
    assert peer.pipelined
