"""The SMTP client against a real SMTP server on loopback.

The server is a small scriptable sink written here: which extensions it advertises, what it answers
at each stage (and to each recipient), when it drops the connection or delays a reply. It records
what arrived, byte for byte, including how the client's writes were grouped into reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from msgspool.domain.outcome import Reply
from msgspool.transports.smtp_client import (
    ClientTimeouts,
    SMTPClient,
    SMTPConnectionError,
    dot_stuff,
)

ALL_EXTENSIONS = ["PIPELINING", "SIZE 0", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
RECIPIENTS = ["a@dest.example", "b@dest.example", "c@dest.example"]
MESSAGE = b"Subject: hello\r\n\r\nbody line\r\n"


@dataclass
class Envelope:
    """One transaction as the sink saw it; content already un-stuffed."""

    mail: bytes
    rcpts: list[str]
    content: bytes = b""


@dataclass
class Script:
    """How the sink behaves. Replies are full wire lines; a stage in `drop` closes instead of replying."""

    extensions: list[str] = field(default_factory=lambda: list(ALL_EXTENSIONS))
    ehlo: bytes = b""  # when set, the reply to EHLO instead of the extension list
    greeting: bytes = b"220 sink.test ESMTP\r\n"
    mail: bytes = b"250 2.1.0 Ok\r\n"
    rcpt: dict[str, bytes] = field(default_factory=dict)  # per address; default 250
    data: bytes = b"354 End data with <CR><LF>.<CR><LF>\r\n"
    data_without_rcpts: bytes = b"554 5.5.1 no valid recipients\r\n"  # RFC 2920 §3.1; some servers say 354
    done: bytes = b"250 2.0.0 Ok: queued\r\n"
    drop: set[str] = field(default_factory=set)  # "MAIL", "RCPT", "DATA", "content"
    delay: dict[str, float] = field(default_factory=dict)  # stage -> seconds before replying


class Sink:
    """An SMTP server that keeps what it receives; enough protocol to exercise a client."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.commands: list[str] = []  # verbs, in arrival order
        self.reads: list[bytes] = []  # every chunk as read from the socket
        self.envelopes: list[Envelope] = []
        self.connections = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            with contextlib.suppress(ConnectionError):
                await _Session(self, reader, writer).run()
        finally:
            writer.close()


class _Session:
    def __init__(self, sink: Sink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sink, self.script = sink, sink.script
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.envelope: Envelope | None = None

    async def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            chunk = await self.reader.read(65536)
            if not chunk:
                return None
            self.sink.reads.append(chunk)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    async def reply(self, stage: str, text: bytes) -> bool:
        """Send `text` for `stage`; False when the script says to drop the connection instead."""
        if stage in self.script.drop:
            return False
        await asyncio.sleep(self.script.delay.get(stage, 0))
        self.writer.write(text)
        await self.writer.drain()
        return True

    async def run(self) -> None:
        if not await self.reply("greeting", self.script.greeting) or not self.script.greeting.startswith(b"2"):
            return
        while (line := await self.line()) is not None:
            verb = line.split(b":")[0].split(b" ")[0].strip().upper().decode()
            self.sink.commands.append(verb)
            if not await self.dispatch(verb, line):
                return

    async def dispatch(self, verb: str, line: bytes) -> bool:
        handler = getattr(self, f"smtp_{verb}", None)
        if handler is None:
            return await self.reply(verb, b"502 5.5.2 command not recognized\r\n")
        result: bool = await handler(line)
        return result

    async def smtp_EHLO(self, line: bytes) -> bool:
        if self.script.ehlo:
            return await self.reply("EHLO", self.script.ehlo)
        lines = ["sink.test greets you", *self.script.extensions]
        wire = "".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n" for i, text in enumerate(lines))
        return await self.reply("EHLO", wire.encode())

    async def smtp_HELO(self, line: bytes) -> bool:
        return await self.reply("HELO", b"250 sink.test\r\n")

    async def smtp_MAIL(self, line: bytes) -> bool:
        if self.script.mail.startswith(b"2"):
            self.envelope = Envelope(line.rstrip(b"\r\n"), [])
        return await self.reply("MAIL", self.script.mail)

    async def smtp_RCPT(self, line: bytes) -> bool:
        if self.envelope is None:
            return await self.reply("RCPT", b"503 5.5.1 need MAIL first\r\n")
        address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
        answer = self.script.rcpt.get(address, b"250 2.1.5 Ok\r\n")
        if answer.startswith(b"2"):
            self.envelope.rcpts.append(address)
        return await self.reply("RCPT", answer)

    async def smtp_DATA(self, line: bytes) -> bool:
        envelope = self.envelope if self.envelope is not None and self.envelope.rcpts else None
        answer = self.script.data if envelope is not None else self.script.data_without_rcpts
        if not await self.reply("DATA", answer):
            return False
        if not answer.startswith(b"354"):
            return True
        return await self.receive_content(envelope or Envelope(b"", []))

    async def receive_content(self, envelope: Envelope) -> bool:
        lines = []
        while (line := await self.line()) != b".\r\n":
            if line is None or "content" in self.script.drop:
                return False
            lines.append(line[1:] if line.startswith(b".") else line)  # §4.5.2, the receiver's side
        envelope.content = b"".join(lines)
        self.sink.envelopes.append(envelope)
        self.envelope = None
        return await self.reply("done", self.script.done)

    async def smtp_RSET(self, line: bytes) -> bool:
        self.envelope = None
        return await self.reply("RSET", b"250 2.0.0 Ok\r\n")

    async def smtp_NOOP(self, line: bytes) -> bool:
        return await self.reply("NOOP", b"250 2.0.0 Ok\r\n")

    async def smtp_QUIT(self, line: bytes) -> bool:
        await self.reply("QUIT", b"221 2.0.0 Bye\r\n")
        return False


Serve = Callable[..., Awaitable[Sink]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start sinks on loopback; at the end stop them and any session still running (a delayed reply)."""
    started: list[tuple[asyncio.Server, Sink]] = []

    async def start(script: Script | None = None) -> Sink:
        sink = Sink(script or Script())
        server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
        sink.port = server.sockets[0].getsockname()[1]
        started.append((server, sink))
        return sink

    yield start
    for server, sink in started:
        server.close()
        await server.wait_closed()
        for task in sink.tasks:
            task.cancel()
        await asyncio.gather(*sink.tasks, return_exceptions=True)


async def connect(sink: Sink, **timeouts: float) -> SMTPClient:
    return await SMTPClient.connect(
        "127.0.0.1", sink.port, helo_name="client.test", timeouts=ClientTimeouts(**timeouts)
    )


def rcpt_line(addresses: list[str]) -> list[bytes]:
    return [f"RCPT TO:<{a}>".encode() for a in addresses]


# --- delivery ------------------------------------------------------------------------------------


async def test_delivers_one_message_to_three_recipients_in_one_transaction(serve: Serve) -> None:
    sink = await serve()
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    await client.quit()
    assert [r.code for r in result.outcomes()] == [250, 250, 250]
    assert result.data == Reply(250, "2.0.0", "Ok: queued")
    assert len(sink.envelopes) == 1
    assert sink.envelopes[0].rcpts == RECIPIENTS
    assert sink.envelopes[0].content == MESSAGE
    assert sink.envelopes[0].mail == b"MAIL FROM:<from@src.example> SIZE=%d" % len(MESSAGE)
    assert sink.commands == ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA", "QUIT"]


async def test_reuses_the_connection_for_a_second_transaction(serve: Serve) -> None:
    sink = await serve()
    client = await connect(sink)
    first = await client.send("from@src.example", RECIPIENTS[:1], b"one\r\n")
    second = await client.send("from@src.example", RECIPIENTS[1:], b"two\r\n")
    assert first.outcomes()[0].ok and all(r.ok for r in second.outcomes())
    assert client.usable
    await client.quit()
    assert not client.usable
    assert sink.connections == 1
    assert [e.content for e in sink.envelopes] == [b"one\r\n", b"two\r\n"]


async def test_pipelines_mail_rcpt_and_data_in_one_write(serve: Serve) -> None:
    sink = await serve()
    client = await connect(sink)
    await client.send("from@src.example", RECIPIENTS, MESSAGE)
    group = [chunk for chunk in sink.reads if chunk.startswith(b"MAIL FROM")]
    assert group == [
        b"MAIL FROM:<from@src.example> SIZE=%d\r\n" % len(MESSAGE)
        + b"".join(line + b"\r\n" for line in rcpt_line(RECIPIENTS))
        + b"DATA\r\n"
    ]
    assert sink.reads[-1] == MESSAGE + b".\r\n"  # content and terminator in one write
    await client.quit()


async def test_without_pipelining_sends_one_command_at_a_time(serve: Serve) -> None:
    sink = await serve(Script(extensions=["SIZE 0"]))
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert all(r.ok for r in result.outcomes())
    assert not any(chunk.startswith(b"MAIL") and b"RCPT" in chunk for chunk in sink.reads)
    assert sink.envelopes[0].content == MESSAGE
    await client.quit()


@pytest.mark.parametrize(
    "content",
    [
        b".starts with a dot\r\n..two dots\r\n.\r\nmiddle\r\n. \r\nend\r\n",
        b"no final line break\r\n.",
        b"",
        b"..\r\n",
    ],
)
async def test_dot_stuffing_round_trips(serve: Serve, content: bytes) -> None:
    sink = await serve()
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS[:1], content)
    assert result.outcomes()[0].ok
    expected = content if content.endswith(b"\r\n") else content + b"\r\n"
    assert sink.envelopes[0].content == expected
    await client.quit()


def test_dot_stuff_wire_form() -> None:
    assert dot_stuff(b".a\r\n.b\r\nc") == b"..a\r\n..b\r\nc\r\n.\r\n"


# --- per-recipient and per-message replies -------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
async def test_per_recipient_rejection_leaves_siblings_delivered(serve: Serve, pipelining: bool) -> None:
    script = Script(rcpt={"b@dest.example": b"550 5.1.1 no such user\r\n"})
    if not pipelining:
        script.extensions.remove("PIPELINING")
    sink = await serve(script)
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert [r.line() for r in result.outcomes()] == [
        "250 2.0.0 Ok: queued",
        "550 5.1.1 no such user",
        "250 2.0.0 Ok: queued",
    ]
    assert sink.envelopes[0].rcpts == ["a@dest.example", "c@dest.example"]
    await client.quit()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_mail_452_defers_every_recipient(serve: Serve, pipelining: bool) -> None:
    script = Script(mail=b"452 4.3.1 insufficient system storage\r\n")
    if not pipelining:
        script.extensions.remove("PIPELINING")
    sink = await serve(script)
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert result.data is None
    assert [r.line() for r in result.outcomes()] == ["452 4.3.1 insufficient system storage"] * 3
    assert all(r.temporary for r in result.outcomes())
    assert client.usable and (await client.noop()).ok
    await client.quit()


async def test_data_554_fails_every_accepted_recipient(serve: Serve) -> None:
    sink = await serve(Script(data=b"554 5.7.1 not today\r\n"))
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert [r.line() for r in result.outcomes()] == ["554 5.7.1 not today"] * 3
    assert sink.commands[-1] == "RSET"  # the half-open transaction was cleared
    assert client.usable
    await client.quit()


async def test_final_dot_rejection_is_every_recipients_outcome(serve: Serve) -> None:
    sink = await serve(Script(done=b"451 4.3.0 try later\r\n"))
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert [r.line() for r in result.outcomes()] == ["451 4.3.0 try later"] * 3
    await client.quit()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_no_recipient_accepted_sends_no_content_and_keeps_the_connection(serve: Serve, pipelining: bool) -> None:
    script = Script(rcpt={a: b"550 5.1.1 unknown\r\n" for a in RECIPIENTS})
    if not pipelining:
        script.extensions.remove("PIPELINING")
    sink = await serve(script)
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert result.data is None
    assert [r.code for r in result.outcomes()] == [550, 550, 550]
    assert not any(MESSAGE in chunk for chunk in sink.reads)
    assert sink.commands[-1] == "RSET"
    assert client.usable
    second = await client.send("from@src.example", ["other@dest.example"], b"later\r\n")
    assert second.outcomes()[0].ok and sink.envelopes[0].content == b"later\r\n"
    await client.quit()


async def test_354_without_valid_recipients_gets_an_empty_message_not_the_content(serve: Serve) -> None:
    script = Script(rcpt={a: b"550 5.1.1 unknown\r\n" for a in RECIPIENTS}, data_without_rcpts=b"354 go on\r\n")
    sink = await serve(script)
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert result.data is None and [r.code for r in result.outcomes()] == [550, 550, 550]
    assert [e.content for e in sink.envelopes] == [b""]
    assert client.usable and (await client.noop()).ok
    await client.quit()


async def test_multiline_replies_are_joined_and_keep_one_enhanced_code(serve: Serve) -> None:
    script = Script(rcpt={"b@dest.example": b"550-5.1.1 first line\r\n550-5.1.1 second\r\n550 5.1.1 last\r\n"})
    sink = await serve(script)
    client = await connect(sink)
    assert client.extensions["SIZE"] == "0" and "PIPELINING" in client.extensions
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert result.rcpts[1] == Reply(550, "5.1.1", "first line\nsecond\nlast")
    await client.quit()


# --- extensions ----------------------------------------------------------------------------------


async def test_ehlo_502_falls_back_to_helo_without_pipelining(serve: Serve) -> None:
    sink = await serve(Script(ehlo=b"502 5.5.2 what is EHLO\r\n"))
    client = await connect(sink)
    assert client.extensions == {}
    result = await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert all(r.ok for r in result.outcomes())
    assert sink.commands[:2] == ["EHLO", "HELO"]
    assert sink.envelopes[0].mail == b"MAIL FROM:<from@src.example>"  # no SIZE without EHLO
    assert not any(chunk.startswith(b"MAIL") and b"RCPT" in chunk for chunk in sink.reads)
    await client.quit()


async def test_size_limit_is_enforced_before_sending(serve: Serve) -> None:
    sink = await serve(Script(extensions=["PIPELINING", "SIZE 20"]))
    client = await connect(sink)
    result = await client.send("from@src.example", RECIPIENTS, b"x" * 40 + b"\r\n")
    assert result.outcomes() == [Reply(552, "5.3.4", "message too big for the next hop (SIZE 20)")] * 3
    assert "MAIL" not in sink.commands
    assert client.usable
    await client.quit()


async def test_utf8_envelope_without_smtputf8_fails_every_recipient(serve: Serve) -> None:
    sink = await serve(Script(extensions=["PIPELINING"]))
    client = await connect(sink)
    result = await client.send("from@src.example", ["a@dest.example", "jörg@dest.example"], MESSAGE)
    assert result.outcomes() == [Reply(553, "5.6.7", "next hop does not support SMTPUTF8")] * 2
    assert "MAIL" not in sink.commands
    await client.quit()


async def test_utf8_envelope_with_smtputf8_adds_the_parameter(serve: Serve) -> None:
    sink = await serve()
    client = await connect(sink)
    result = await client.send("from@src.example", ["jörg@dest.example"], MESSAGE)
    assert result.outcomes()[0].ok
    assert sink.envelopes[0].mail.endswith(b" SMTPUTF8")
    assert sink.envelopes[0].rcpts == ["jörg@dest.example"]
    await client.quit()


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (["8BITMIME"], b"MAIL FROM:<from@src.example> BODY=8BITMIME"),
        ([], b"MAIL FROM:<from@src.example>"),
    ],
)
async def test_8bit_content_gets_body_8bitmime_when_advertised(
    serve: Serve, extensions: list[str], expected: bytes
) -> None:
    sink = await serve(Script(extensions=extensions))
    client = await connect(sink)
    content = "Subject: caf\u00e9\r\n\r\n\u00e9t\u00e9\r\n".encode()
    await client.send("from@src.example", RECIPIENTS[:1], content)
    assert sink.envelopes[0].mail == expected
    assert sink.envelopes[0].content == content
    await client.quit()


async def test_extra_mail_and_rcpt_params_are_appended(serve: Serve) -> None:
    sink = await serve()
    client = await connect(sink)
    await client.send(
        "from@src.example",
        RECIPIENTS[:2],
        MESSAGE,
        mail_params=["RET=HDRS", "ENVID=x1"],
        rcpt_params=[["NOTIFY=NEVER"], []],
    )
    assert sink.envelopes[0].mail == b"MAIL FROM:<from@src.example> SIZE=%d RET=HDRS ENVID=x1" % len(MESSAGE)
    assert b"RCPT TO:<a@dest.example> NOTIFY=NEVER\r\nRCPT TO:<b@dest.example>\r\n" in b"".join(sink.reads)
    await client.quit()


async def test_line_break_in_an_address_is_refused(serve: Serve) -> None:
    sink = await serve()
    client = await connect(sink)
    with pytest.raises(ValueError, match="line break"):
        await client.send("from@src.example", ["a@dest.example>\r\nRCPT TO:<evil@x"], MESSAGE)
    assert "MAIL" not in sink.commands
    await client.quit()


# --- connection-level failures -------------------------------------------------------------------


async def test_greeting_554_raises_a_connection_error(serve: Serve) -> None:
    sink = await serve(Script(greeting=b"554 5.3.2 go away\r\n"))
    with pytest.raises(SMTPConnectionError) as caught:
        await connect(sink)
    assert caught.value.reply == Reply(554, "5.3.2", "go away")


async def test_ehlo_421_raises_a_connection_error(serve: Serve) -> None:
    sink = await serve(Script(ehlo=b"421 4.3.2 shutting down\r\n"))
    with pytest.raises(SMTPConnectionError) as caught:
        await connect(sink)
    assert caught.value.reply.line() == "421 4.3.2 shutting down"


async def test_connection_refused_is_4_4_1() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SMTPConnectionError) as caught:
        await SMTPClient.connect("127.0.0.1", port, helo_name="client.test")
    assert caught.value.reply.code == 421 and caught.value.reply.enhanced == "4.4.1"


async def test_server_dropping_the_connection_mid_data_is_4_4_2(serve: Serve) -> None:
    sink = await serve(Script(drop={"content"}))
    client = await connect(sink)
    with pytest.raises(SMTPConnectionError) as caught:
        await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert caught.value.reply.code == 421 and caught.value.reply.enhanced == "4.4.2"
    assert not client.usable
    await client.quit()  # never raises, even on a dead session
    client.close()


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
async def test_server_dropping_the_connection_at_a_command_is_4_4_2(serve: Serve, stage: str) -> None:
    sink = await serve(Script(drop={stage}))
    client = await connect(sink)
    with pytest.raises(SMTPConnectionError) as caught:
        await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert caught.value.reply.enhanced == "4.4.2"
    assert not client.usable


async def test_421_during_a_transaction_raises_with_the_servers_reply(serve: Serve) -> None:
    sink = await serve(Script(rcpt={"b@dest.example": b"421 4.7.0 too many errors\r\n"}))
    client = await connect(sink)
    with pytest.raises(SMTPConnectionError) as caught:
        await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert caught.value.reply == Reply(421, "4.7.0", "too many errors")
    assert not client.usable
    with pytest.raises(SMTPConnectionError):
        await client.send("from@src.example", RECIPIENTS, MESSAGE)


async def test_a_reply_slower_than_its_timeout_raises(serve: Serve) -> None:
    sink = await serve(Script(delay={"RCPT": 2.0}))
    client = await connect(sink, rcpt=0.2)
    with pytest.raises(SMTPConnectionError) as caught:
        await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert caught.value.reply.enhanced == "4.4.2"
    assert "timed out" in caught.value.reply.text and "RCPT" in caught.value.reply.text
    assert not client.usable


async def test_a_greeting_slower_than_its_timeout_raises(serve: Serve) -> None:
    sink = await serve(Script(delay={"greeting": 2.0}))
    with pytest.raises(SMTPConnectionError) as caught:
        await connect(sink, greeting=0.2)
    assert "timed out" in caught.value.reply.text


async def test_a_malformed_reply_is_a_lost_connection(serve: Serve) -> None:
    sink = await serve(Script(mail=b"hello there\r\n"))
    client = await connect(sink)
    with pytest.raises(SMTPConnectionError) as caught:
        await client.send("from@src.example", RECIPIENTS, MESSAGE)
    assert caught.value.reply == Reply(421, "4.4.2", "malformed reply")
