"""The SMTP listener's limits under abuse, over real loopback sockets: connection counts (in all and
per client address), the DATA deadline, control characters in addresses, a bare CR in content.

The timeouts are set short in each test's configuration; nothing here measures time."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msgspool.daemon import start_smtp
from tests.conftest import SpoolerFactory
from tests.integration.test_smtpd import MESSAGE, Client, Listener, transaction
from tests.support.sink import free_port

ListenerFactory = Callable[..., AbstractAsyncContextManager[Listener]]


@pytest.fixture
def listen(spooler_factory: SpoolerFactory) -> ListenerFactory:
    @asynccontextmanager
    async def factory(**settings: Any) -> AsyncIterator[Listener]:
        port = free_port()
        settings.setdefault("local_domains", ["example.org"])
        async with spooler_factory(smtp_listen=f"127.0.0.1:{port}", **settings) as spooler:
            server = await start_smtp(spooler, spooler.settings)
            try:
                yield Listener(spooler, port)
            finally:
                server.close()

    return factory


async def connect(listener: Listener, source: str = "127.0.0.1") -> tuple[Client, tuple[int, str]]:
    """A client from `source` (any 127.0.0.0/8 address is this machine) and the greeting it got."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port, local_addr=(source, 0))
    client = Client(reader, writer)
    return client, await client.reply()


async def closed(c: Client) -> bool:
    return await asyncio.wait_for(c.reader.read(), 5) == b""


async def quit_(c: Client) -> None:
    assert await c.cmd("QUIT") == (221, "2.0.0 Bye")
    assert await closed(c)


async def test_sessions_over_the_total_limit_get_421_and_are_closed_until_one_ends(listen: ListenerFactory) -> None:
    async with listen(smtpd_connection_limit=3, trusted_networks=["127.0.0.9/32"]) as listener:
        sessions = [await connect(listener, source=f"127.0.0.{i + 1}") for i in range(3)]
        assert [greeting[0] for _c, greeting in sessions] == [220, 220, 220]
        extra, greeting = await connect(listener, source="127.0.0.4")
        assert greeting == (421, "4.7.0 mx.test Error: too many connections")
        assert await closed(extra)
        trusted, greeting = await connect(listener, source="127.0.0.9")  # neither limited nor counted
        assert greeting[0] == 220
        await quit_(trusted)
        extra, greeting = await connect(listener, source="127.0.0.4")
        assert greeting[0] == 421
        await quit_(sessions[0][0])
        again, greeting = await connect(listener, source="127.0.0.4")
        assert greeting[0] == 220
        await transaction(again, rcpt="bob@example.org")  # a full session
        assert (await again.cmd(MESSAGE + b"."))[0] == 250


async def test_sessions_over_the_per_client_limit_get_421_while_another_client_gets_in(
        listen: ListenerFactory) -> None:
    async with listen(smtpd_client_connection_limit=2, trusted_networks=["192.0.2.0/24"]) as listener:
        first = [await connect(listener) for _ in range(2)]
        assert [greeting[0] for _c, greeting in first] == [220, 220]
        extra, greeting = await connect(listener)
        assert greeting == (421, "4.7.0 mx.test Error: too many connections from 127.0.0.1")
        assert await closed(extra)
        other, greeting = await connect(listener, source="127.0.0.2")
        assert greeting[0] == 220
        assert (await other.cmd("EHLO other.test"))[0] == 250
        await quit_(first[0][0])
        _again, greeting = await connect(listener)
        assert greeting[0] == 220


async def test_refused_sessions_do_not_count(listen: ListenerFactory) -> None:
    async with listen(smtpd_client_connection_limit=1, trusted_networks=[]) as listener:
        kept, _greeting = await connect(listener)
        for _ in range(5):
            refused, greeting = await connect(listener)
            assert greeting[0] == 421
            assert await closed(refused)
        await quit_(kept)
        assert (await connect(listener))[1][0] == 220


async def test_trusted_clients_are_exempt_from_the_connection_limits(listen: ListenerFactory) -> None:
    async with listen(smtpd_client_connection_limit=2, smtpd_connection_limit=3) as listener:  # loopback: trusted
        sessions = [await connect(listener) for _ in range(5)]
        assert [greeting[0] for _c, greeting in sessions] == [220] * 5


async def test_a_data_phase_fed_one_byte_at_a_time_is_cut_at_the_data_deadline(listen: ListenerFactory) -> None:
    async with listen(smtpd_data_timeout=0.5, smtpd_timeout=60.0) as listener:
        c = await listener.client()
        await transaction(c, rcpt="bob@example.org")
        await c.send(b"Subject: slow\r\n\r\n")
        reply = asyncio.ensure_future(c.reply())
        for _ in range(200):  # far longer than the deadline, were it not enforced
            if reply.done():
                break
            await c.send(b"x")
            await asyncio.sleep(0.05)
        assert await reply == (421, "4.4.2 mx.test Error: timeout exceeded for the message content")
        assert await closed(c)
        assert await listener.count() == 0


async def test_the_data_deadline_does_not_touch_the_next_transaction(listen: ListenerFactory) -> None:
    async with listen(smtpd_data_timeout=0.3) as listener:
        c = await listener.client()
        await transaction(c, rcpt="bob@example.org")
        assert (await c.cmd(MESSAGE + b"."))[0] == 250
        await asyncio.sleep(0.5)  # past the deadline of the DATA phase that ended
        assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


@pytest.mark.parametrize(("command", "expected"), [
    (b"MAIL FROM:<a\x01b@example.org>", (501, "5.1.7 <a?b@example.org>: Bad sender address syntax")),
    (b"MAIL FROM:<\"a\x7fb\"@example.org>", (501, "5.1.7 <\"a?b\"@example.org>: Bad sender address syntax")),
    (b"MAIL FROM:<\"a\tb\"@example.org>", (501, "5.1.7 <\"a?b\"@example.org>: Bad sender address syntax")),
    (b"MAIL FROM:<\"a\rb\"@example.org>", (501, "5.1.7 <\"a?b\"@example.org>: Bad sender address syntax")),
    (b"MAIL FROM:<a@[127.0.0.\x011]>", (501, "5.1.7 <a@[127.0.0.?1]>: Bad sender address syntax")),
    (b"MAIL FROM:<a\xc2\x85b@example.org> SMTPUTF8", (501, "5.1.7 <a?b@example.org>: Bad sender address syntax")),
    (b"MAIL FROM:<a\xffb@example.org> SMTPUTF8", (501, "5.1.7 <a?b@example.org>: Bad sender address syntax")),
    (b"RCPT TO:<b\x1b@example.org>", (501, "5.1.3 <b?@example.org>: Bad recipient address syntax")),
    (b"RCPT TO:<\"b\x00\"@example.org>", (500, "5.5.2 Error: NUL character in command")),
    (b"RCPT TO:<\"b\x7f\"@example.org>", (501, "5.1.3 <\"b?\"@example.org>: Bad recipient address syntax")),
])
async def test_control_characters_in_addresses_are_refused_as_bad_syntax(
        listen: ListenerFactory, command: bytes, expected: tuple[int, str]) -> None:
    async with listen() as listener:
        c = await listener.client()
        assert (await c.cmd("EHLO c"))[0] == 250
        if command.startswith(b"RCPT"):
            assert (await c.cmd("MAIL FROM:<a@example.org>"))[0] == 250
        assert await c.cmd(command) == expected
        assert await c.cmd("NOOP") == (250, "2.0.0 Ok")


async def test_content_with_a_bare_cr_is_refused_like_a_bare_lf(listen: ListenerFactory) -> None:
    async with listen() as listener:
        c = await listener.client()
        await transaction(c, rcpt="bob@example.org")
        smuggled = b"Subject: x\r\n\r\nbody\r.\rMAIL FROM:<evil@example.org>\r\n."
        assert await c.cmd(smuggled) == (550, "5.5.2 Error: bare <CR> received")
        assert await listener.count() == 0
        await transaction(c, rcpt="bob@example.org")  # in step again
        assert (await c.cmd(MESSAGE + b"."))[0] == 250


async def test_mail_commands_over_the_message_rate_get_450_and_trusted_clients_are_exempt(
        listen: ListenerFactory) -> None:
    async with listen(smtpd_client_message_rate_limit=2, trusted_networks=["127.0.0.2/32"]) as listener:
        c, _greeting = await connect(listener)
        assert (await c.cmd("EHLO c"))[0] == 250
        for _ in range(2):
            assert await c.cmd("MAIL FROM:<a@example.org>") == (250, "2.1.0 Ok")
            assert (await c.cmd("RSET"))[0] == 250
        assert await c.cmd("MAIL FROM:<a@example.org>") == (450, "4.7.1 Error: too much mail from 127.0.0.1")
        again, _greeting = await connect(listener)  # counted per client, not per session
        assert (await again.cmd("EHLO c"))[0] == 250
        assert (await again.cmd("MAIL FROM:<a@example.org>"))[0] == 450
        trusted, _greeting = await connect(listener, source="127.0.0.2")
        assert (await trusted.cmd("EHLO c"))[0] == 250
        for _ in range(3):
            assert (await trusted.cmd("MAIL FROM:<a@example.org>"))[0] == 250
            assert (await trusted.cmd("RSET"))[0] == 250


async def test_rcpt_commands_over_the_recipient_rate_get_450_and_the_accepted_ones_are_delivered(
        listen: ListenerFactory) -> None:
    async with listen(smtpd_client_recipient_rate_limit=3, trusted_networks=[]) as listener:
        c = await listener.client()
        assert (await c.cmd("EHLO c"))[0] == 250
        assert (await c.cmd("MAIL FROM:<x@elsewhere.test>"))[0] == 250
        assert [await c.cmd(f"RCPT TO:<u{i}@example.org>") for i in range(4)] == [(250, "2.1.5 Ok")] * 3 + [
            (450, "4.7.1 Error: too many recipients from 127.0.0.1")]
        assert (await c.cmd("DATA"))[0] == 354
        code, text = await c.cmd(MESSAGE + b".")
        assert code == 250
        info = await listener.spooler.message(text.rsplit(" ", 1)[1])
        assert [r["address"] for r in info["recipients"]] == ["u0@example.org", "u1@example.org", "u2@example.org"]


def spill_files(spool: Path) -> list[str]:
    """This process's open files in the spool directory that have no name (the DATA spill files)."""
    links = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            links.append(os.readlink(fd))
    return [link for link in links if link.startswith(str(spool)) and link.endswith("(deleted)")]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_large_message_goes_to_a_spill_file_while_it_arrives_and_is_stored_intact(
        listen: ListenerFactory) -> None:
    async with listen(message_size_limit=4_000_000) as listener:
        spool = listener.spooler.settings.spool_path.resolve()
        c = await listener.client()
        await transaction(c, rcpt="bob@example.org")
        lines = [b".leading dot %d" % i if i % 7 == 0 else b"line %d " % i + b"x" * 70 for i in range(20_000)]
        body = b"".join(b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines)
        for start in range(0, len(body), 65_536):
            await c.send(body[start:start + 65_536])
        await asyncio.sleep(0.1)
        assert len(spill_files(spool)) == 1  # ~1.6 MB arrived: beyond the in-memory threshold
        code, text = await c.cmd(b".")
        assert code == 250
        assert spill_files(spool) == []
        content = await listener.spooler.content(text.rsplit(" ", 1)[1])
    assert content.startswith(b"Received: ")
    assert content.endswith(b"".join(line + b"\r\n" for line in lines))  # unstuffed across the spill


async def test_an_oversize_message_is_discarded_as_it_arrives_not_spilled(listen: ListenerFactory) -> None:
    async with listen(message_size_limit=300_000) as listener:
        spool = listener.spooler.settings.spool_path.resolve()
        c = await listener.client()
        await transaction(c, rcpt="bob@example.org")
        chunk = (b"x" * 998 + b"\r\n") * 64
        for _ in range(40):  # 2.5 MB against a 300 KB limit
            await c.send(chunk)
        await asyncio.sleep(0.1)
        assert spill_files(spool) == []
        assert await c.cmd(b".") == (552, "5.3.4 Message size exceeds fixed limit")
        await transaction(c, rcpt="bob@example.org")
        assert (await c.cmd(MESSAGE + b"."))[0] == 250


@pytest.mark.parametrize("command", [b"EHLO a\rb", b"HELO a\x1bb", b"EHLO \xff\xfe", b"EHLO a\x7f"])
async def test_a_helo_name_with_control_characters_is_refused(listen: ListenerFactory, command: bytes) -> None:
    async with listen() as listener:
        c = await listener.client()
        code, text = await c.cmd(command)
        assert (code, text) == (501, f"5.5.4 Syntax: {command[:4].decode()} hostname")
        assert await c.cmd("MAIL FROM:<a@example.org>") == (503, "5.5.1 Error: send HELO/EHLO first")
