"""The SMTP listener over real loopback sockets, in front of a real SQLite spool.

Conversations are written as raw lines so every reply code and enhanced status code is checked
exactly; smtplib is used where a plain client is the point.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from msgspool.daemon import start_smtp
from msgspool.domain.dsn import OriginalRecipient, RecipientDSN
from msgspool.spooler.intake import Submission
from msgspool.spooler.runtime import Spooler
from tests.conftest import SpoolerFactory
from tests.support.sink import Sink, free_port

MESSAGE = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@dataclass
class Listener:
    spooler: Spooler
    port: int

    async def client(self) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = Client(reader, writer)
        assert (await client.reply())[0] == 220
        return client

    async def count(self) -> int:
        return (await self.spooler.store.counts())["messages"]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text of the last line)."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 5)
            if not line:
                return 0, "connection closed"
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode().rstrip("\r\n")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> tuple[int, str]:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def listener(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[Listener]:
    port = free_port()
    async with spooler_factory(relay=sink.address, smtp_listen=f"127.0.0.1:{port}",
                               local_domains=["example.org"], message_size_limit=10_000) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            yield Listener(spooler, port)
        finally:
            server.close()


async def transaction(c: Client, rcpt: str = "b@example.com") -> None:
    assert (await c.cmd("EHLO client.test"))[0] == 250
    assert await c.cmd("MAIL FROM:<a@example.org>") == (250, "2.1.0 Ok")
    assert await c.cmd(f"RCPT TO:<{rcpt}>") == (250, "2.1.5 Ok")
    assert (await c.cmd("DATA"))[0] == 354


async def ehlo_keywords(c: Client) -> list[str]:
    """The extension keywords of the EHLO reply (its first line, the greeting, left out)."""
    await c.send(b"EHLO client.test\r\n")
    lines = []
    while True:
        line = (await c.reader.readline()).decode().rstrip()
        lines.append(line[4:])
        if line[3] == " ":
            return lines[1:]


async def test_ehlo_advertises_the_extensions(listener: Listener) -> None:
    lines = await ehlo_keywords(await listener.client())
    assert lines[:-1] == ["PIPELINING", "SIZE 10000", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN"]
    assert lines[-1].startswith("FUTURERELEASE 604800 ")  # RFC 4865, for this trusted (loopback) client


async def test_message_is_acknowledged_with_its_queue_id_after_commit_and_relayed(listener: Listener,
                                                                                 sink: Sink) -> None:
    c = await listener.client()
    await transaction(c)
    code, text = await c.cmd(MESSAGE + b".")
    assert code == 250 and text.startswith("2.0.0 Ok: queued as ")
    queue_id = text.rsplit(" ", 1)[1]
    info = await listener.spooler.message(queue_id)  # committed before the 250 went out
    assert info["origin"] == "smtp" and info["sender"] == "a@example.org"
    await sink.async_wait_for(1)
    received = sink.messages[0].content
    assert received.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (msgspool) with ESMTP id "
                               + queue_id.encode())
    assert received.endswith(MESSAGE)


async def test_pipelined_transaction_is_answered_in_order(listener: Listener, sink: Sink) -> None:
    c = await listener.client()
    assert (await c.cmd("EHLO client.test"))[0] == 250
    await c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<bad address>\r\n"
                 b"RCPT TO:<c@example.com>\r\nDATA\r\n")
    replies = [await c.reply() for _ in range(5)]
    assert [code for code, _ in replies] == [250, 250, 501, 250, 354]
    await c.send(b"Subject: pipelined\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
    assert (await c.reply())[0] == 250
    assert await c.reply() == (221, "2.0.0 Bye")
    await sink.async_wait_for(1)
    assert sink.messages[0].recipients == ["b@example.com", "c@example.com"]
    assert sink.messages[0].content.endswith(b"\r\n\r\n.leading dot\r\n")  # unstuffed, then restuffed on relay


async def test_two_messages_on_one_connection(listener: Listener, sink: Sink) -> None:
    c = await listener.client()
    for _ in range(2):
        await transaction(c)
        assert (await c.cmd(MESSAGE + b"."))[0] == 250
    await sink.async_wait_for(2)


@pytest.mark.parametrize(("lines", "expected"), [
    (["MAIL FROM:<a@example.org>"], (503, "5.5.1 Error: send HELO/EHLO first")),
    (["EHLO c", "RCPT TO:<b@example.com>"], (503, "5.5.1 Error: need MAIL command")),
    (["EHLO c", "DATA"], (503, "5.5.1 Error: need MAIL command")),
    (["EHLO c", "MAIL FROM:<a@example.org>", "MAIL FROM:<a@example.org>"], (503, "5.5.1 Error: nested MAIL command")),
    (["HELO c", "MAIL FROM:<a@example.org>", "DATA"], (503, "5.5.1 Error: need RCPT command")),
    (["EHLO c", "MAIL FROM:<a@example.org>", "DATA"], (554, "5.5.1 Error: no valid recipients")),
    (["EHLO"], (501, "5.5.4 Syntax: EHLO hostname")),
    (["EHLO c", "MAIL FROM:a@example.org extra"], (555, "5.5.4 Unsupported option: EXTRA")),
    (["EHLO c", "MAIL FROM:<a@example.org> SIZE=a=b"], (501, "5.5.4 Syntax error in parameters")),
    (["EHLO c", "MAIL TO:<a@example.org>"], (501, "5.5.4 Syntax: MAIL FROM:<address>")),
    (["EHLO c", "MAIL FROM:<not an address>"], (501, "5.1.7 <not an address>: Bad sender address syntax")),
    (["EHLO c", "MAIL FROM:<a@example.org> SIZE=20000"], (552, "5.3.4 Message size exceeds fixed limit")),
    (["EHLO c", "MAIL FROM:<a@example.org> BODY=BINARYMIME"], (501, "5.5.4 Bad BODY parameter")),
    (["EHLO c", "MAIL FROM:<a@example.org> FOO=BAR"], (555, "5.5.4 Unsupported option: FOO")),
    (["HELO c", "MAIL FROM:<a@example.org> SIZE=10"], (501, "5.5.4 Syntax error in parameters")),
    (["EHLO c", "MAIL FROM:<a@example.org>", "RCPT TO:<b@@example.com>"],
     (501, "5.1.3 <b@@example.com>: Bad recipient address syntax")),
    (["EHLO c", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com> XFOO=1"],
     (555, "5.5.4 Unsupported option: XFOO")),
    (["HELO c", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.com> NOTIFY=NEVER"],
     (501, "5.5.4 Syntax error in parameters")),
    (["EHLO c", "MAIL FROM:<a@example.org>", "RCPT TO:<jöran@example.com>"],
     (553, "5.6.7 Error: must declare SMTPUTF8 to send unicode address")),
    (["EHLO c", "DATA extra"], (501, "5.5.4 Syntax: DATA")),
    (["EHLO c", "BDAT 10 LAST"], (500, "5.5.2 Error: command not recognized")),
    (["EHLO c", ""], (500, "5.5.2 Error: command not recognized")),
    (["EHLO c", "EXPN staff"], (502, "5.5.1 Error: EXPN is not supported")),
    (["EHLO c", "VRFY bob"], (252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")),
    (["EHLO c", "NOOP"], (250, "2.0.0 Ok")),
    (["EHLO c", "MAIL FROM:<a@example.org>", "RSET"], (250, "2.0.0 Ok")),
])
async def test_bad_or_out_of_order_commands_get_their_reply_and_the_session_goes_on(
        listener: Listener, lines: list[str], expected: tuple[int, str]) -> None:
    c = await listener.client()
    for line in lines[:-1]:
        assert (await c.cmd(line))[0] < 400, line
    assert await c.cmd(lines[-1]) == expected
    assert await c.cmd("NOOP") == (250, "2.0.0 Ok")  # still usable


async def test_relay_is_denied_to_untrusted_clients_but_local_mail_is_accepted(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    port = free_port()
    async with spooler_factory(relay=sink.address, smtp_listen=f"127.0.0.1:{port}", local_domains=["example.org"],
                               trusted_networks=["192.0.2.0/24"]) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            c = await Listener(spooler, port).client()
            assert (await c.cmd("EHLO c"))[0] == 250
            assert (await c.cmd("MAIL FROM:<x@elsewhere.test>"))[0] == 250
            assert await c.cmd("RCPT TO:<b@example.com>") == (554, "5.7.1 <b@example.com>: Relay access denied")
            assert await c.cmd("RCPT TO:<bob@example.org>") == (250, "2.1.5 Ok")
            assert await c.cmd("RCPT TO:<Postmaster>") == (250, "2.1.5 Ok")
        finally:
            server.close()


async def test_unknown_local_user_is_refused_when_mailboxes_are_listed(spooler_factory: SpoolerFactory) -> None:
    port = free_port()
    async with spooler_factory(smtp_listen=f"127.0.0.1:{port}", local_domains=["example.org"],
                               mailboxes=["bob@example.org"]) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            c = await Listener(spooler, port).client()
            await c.cmd("EHLO c")
            await c.cmd("MAIL FROM:<x@elsewhere.test>")
            assert (await c.cmd("RCPT TO:<alice@example.org>"))[0:1] == (550,)
            assert (await c.cmd("RCPT TO:<Bob@Example.org>")) == (250, "2.1.5 Ok")
        finally:
            server.close()


async def test_content_with_a_bare_lf_is_refused_and_nothing_is_stored(listener: Listener) -> None:
    c = await listener.client()
    await transaction(c)
    assert await c.cmd(b"Subject: x\r\n\r\nline one\nline two\r\n.") == (550, "5.5.2 Error: bare <LF> received")
    assert await listener.count() == 0
    assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


async def test_a_bare_lf_dot_does_not_end_the_data(listener: Listener, sink: Sink) -> None:
    """SMTP smuggling: only <CRLF>.<CRLF> ends the content, so a smuggled second message stays inside."""
    c = await listener.client()
    await transaction(c)
    smuggled = b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@example.org>\nRCPT TO:<b@example.com>\nDATA\nevil\r\n."
    assert (await c.cmd(smuggled))[0] == 550
    assert await c.cmd("NOOP") == (250, "2.0.0 Ok")
    assert await listener.count() == 0


async def test_content_with_nul_is_refused(listener: Listener) -> None:
    c = await listener.client()
    await transaction(c)
    assert await c.cmd(b"Subject: x\r\n\r\nnul\x00here\r\n.") == (550, "5.6.0 Error: message contains NUL characters")
    assert await listener.count() == 0


async def test_oversize_content_is_read_to_the_end_then_refused(listener: Listener) -> None:
    c = await listener.client()
    await transaction(c)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 40  # 40 KB against a 10 KB limit
    assert await c.cmd(big + b".") == (552, "5.3.4 Message size exceeds fixed limit")
    assert await listener.count() == 0
    await transaction(c)  # the session is in step again
    assert (await c.cmd(MESSAGE + b"."))[0] == 250


async def test_empty_message_is_accepted(listener: Listener) -> None:
    c = await listener.client()
    await transaction(c)
    assert (await c.cmd(b"."))[0] == 250


async def test_too_many_hops_is_a_loop(listener: Listener) -> None:
    c = await listener.client()
    await transaction(c)
    hops = b"".join(b"Received: from hop%d by x; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % i for i in range(50))
    assert await c.cmd(hops + MESSAGE + b".") == (554, "5.4.6 too many hops: mail loop suspected")
    assert await listener.count() == 0


async def test_overlong_command_line_is_refused_and_skipped(listener: Listener) -> None:
    c = await listener.client()
    await c.cmd("EHLO c")
    assert await c.cmd(b"NOOP " + b"x" * 5000) == (500, "5.5.2 Error: line too long")
    assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


async def test_nul_in_a_command_is_refused(listener: Listener) -> None:
    c = await listener.client()
    assert await c.cmd(b"EHLO c\x00d") == (500, "5.5.2 Error: NUL character in command")


async def test_too_many_errors_end_the_session(listener: Listener) -> None:
    c = await listener.client()
    await c.send(b"BOGUS\r\n" * 25)
    codes = [(await c.reply())[0] for _ in range(21)]
    assert codes == [500] * 20 + [421]
    assert await c.reply() == (0, "connection closed")


async def test_idle_client_is_disconnected_with_421(spooler_factory: SpoolerFactory) -> None:
    port = free_port()
    async with spooler_factory(smtp_listen=f"127.0.0.1:{port}", smtpd_timeout=0.3) as spooler:
        server = await start_smtp(spooler, spooler.settings)
        try:
            c = await Listener(spooler, port).client()
            code, text = await c.reply()
            assert code == 421 and text.endswith("4.4.2 mx.test Error: timeout exceeded")
        finally:
            server.close()


async def test_smtputf8_addresses_are_accepted_when_declared(listener: Listener) -> None:
    c = await listener.client()
    await c.cmd("EHLO c")
    assert await c.cmd("MAIL FROM:<jöran@example.org> SMTPUTF8") == (250, "2.1.0 Ok")
    assert await c.cmd("RCPT TO:<bjørn@example.org>") == (250, "2.1.5 Ok")
    assert (await c.cmd("DATA"))[0] == 354
    assert (await c.cmd(MESSAGE + b"."))[0] == 250


async def test_smtplib_client_with_many_recipients(listener: Listener, sink: Sink) -> None:
    recipients = [f"r{i}@example.com" for i in range(120)]

    def send() -> dict[str, Any]:
        with smtplib.SMTP("127.0.0.1", listener.port, timeout=5) as client:
            return client.sendmail("a@example.org", recipients, MESSAGE)

    assert await asyncio.to_thread(send) == {}
    await sink.async_wait_for(3)  # 120 recipients at 50 per transaction
    assert sorted(sink.recipients()) == sorted(recipients)


@pytest.mark.parametrize(("command", "expected"), [
    ("MAIL FROM:<a@example.org> RET=SOME", "501 5.5.4 Error: bad RET parameter: expected FULL or HDRS"),
    ("MAIL FROM:<a@example.org> ENVID=bad+zz", "501 5.5.4"),
    ("RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS", "501 5.5.4 Error: bad NOTIFY parameter: NEVER cannot be combined"),
    ("RCPT TO:<b@example.com> NOTIFY=SOMETIMES", "501 5.5.4 Error: bad NOTIFY parameter: unknown keyword"),
    ("RCPT TO:<b@example.com> ORCPT=rfc822;bad+xtext", "501 5.5.4"),
    ("RCPT TO:<b@example.com> ORCPT=nosemicolon", "501 5.5.4 Error: bad ORCPT parameter: expected addr-type;address"),
    ("MAIL FROM:<a@example.org> RET=HDRS ret=FULL", "501 5.5.4 Error: duplicate RET parameter"),
    ("RCPT TO:<b@example.com> NOTIFY=SUCCESS NOTIFY=NEVER", "501 5.5.4 Error: duplicate NOTIFY parameter"),
])
async def test_malformed_dsn_parameters_are_refused_with_501_5_5_4(listener: Listener, command: str,
                                                                    expected: str) -> None:
    c = await listener.client()
    await c.cmd("EHLO c")
    if command.startswith("RCPT"):
        assert (await c.cmd("MAIL FROM:<a@example.org>"))[0] == 250
    code, text = await c.cmd(command)
    assert f"{code} {text}".startswith(expected)
    assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


async def dsn_transaction(c: Client) -> str:
    assert (await c.cmd("EHLO c"))[0] == 250
    assert (await c.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2B1"))[0] == 250
    assert (await c.cmd("RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+2Bx@example.com"))[0] == 250
    assert (await c.cmd("RCPT TO:<c@example.com>"))[0] == 250
    assert (await c.cmd("DATA"))[0] == 354
    code, text = await c.cmd(MESSAGE + b".")
    assert code == 250
    return text.rsplit(" ", 1)[1]


async def test_dsn_requests_are_stored_and_passed_to_a_next_hop_that_advertises_dsn(
        spooler_factory: SpoolerFactory) -> None:
    sink = Sink(dsn=True).start()
    port = free_port()
    try:
        async with spooler_factory(relay=sink.address, smtp_listen=f"127.0.0.1:{port}") as spooler:
            server = await start_smtp(spooler, spooler.settings)
            try:
                queue_id = await dsn_transaction(await Listener(spooler, port).client())
                await sink.async_wait_for(1)
                info = await spooler.message(queue_id)
            finally:
                server.close()
    finally:
        sink.stop()
    assert (info["ret"], info["envid"]) == ("HDRS", "QQ+1")
    assert [(r["notify"], r["orcpt"]) for r in info["recipients"]] == [
        ("SUCCESS,FAILURE", "rfc822;B+x@example.com"), (None, None)]
    mail, *rcpts = sink.commands
    assert mail.endswith(" RET=HDRS ENVID=QQ+2B1")
    assert rcpts[0] == "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+2Bx@example.com"
    assert rcpts[1] == "RCPT TO:<c@example.com> ORCPT=rfc822;c@example.com"  # RFC 3461 §5.2.1: added


async def test_a_utf8_orcpt_is_sent_raw_only_in_a_transaction_that_uses_smtputf8(
        spooler_factory: SpoolerFactory) -> None:
    # RFC 6533 §3: the raw UTF-8 form only where MAIL FROM declared SMTPUTF8, which an ASCII envelope
    # does not, though the next hop offers it; the xtext-encoded form otherwise.
    sink = Sink(dsn=True, smtputf8=True).start()
    orcpt = RecipientDSN(None, OriginalRecipient("utf-8", "jörg@example.com"))
    try:
        async with spooler_factory(relay=sink.address) as spooler:
            for rcpt in ("j@example.com", "jörg@example.com"):
                await spooler.submit(Submission(sender="a@example.org", recipients=[rcpt], content=MESSAGE,
                                                recipient_dsn=[orcpt]))
                await sink.async_wait_for(len(sink.messages) + 1)
    finally:
        sink.stop()
    assert sink.commands[1] == "RCPT TO:<j@example.com> ORCPT=utf-8;j\\x{F6}rg@example.com"
    assert sink.commands[2].endswith(" SMTPUTF8")
    assert sink.commands[3] == "RCPT TO:<jörg@example.com> ORCPT=utf-8;jörg@example.com"


async def test_dsn_parameters_are_not_sent_to_a_next_hop_without_dsn(listener: Listener, sink: Sink) -> None:
    await dsn_transaction(await listener.client())
    await sink.async_wait_for(1)
    assert all("NOTIFY=" not in line and "ORCPT=" not in line and "RET=" not in line for line in sink.commands)
