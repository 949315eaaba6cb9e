"""A lean async SMTP client: the wire half of the SMTP transport.

Owns one SMTP session (RFC 5321) to one next hop: connect, greeting, EHLO (HELO fallback), then any
number of mail transactions on the same connection, each with several recipients, then QUIT. It
knows the protocol and nothing of the spool: results are `Reply` objects for the caller to settle.

Why not aiosmtplib: it sends one command per round trip. With PIPELINING (RFC 2920) a transaction
costs two round trips (MAIL+RCPT...+DATA in one write, then the content), which is what the
spooler needs to beat Postfix's throughput (~1,000 msg/s relayed). The hot path therefore writes
each group in a single `write`, stuffs content with `bytes.replace` (no per-line Python work) and
sends content and terminator in one write.

Extensions used when advertised: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
SMTPUTF8 (RFC 6531). Content must already be in canonical CRLF form (intake's job); 8-bit content
to a server without 8BITMIME is sent as is, as Postfix does by default.

Timeouts follow RFC 5321 §4.5.3.2 (`ClientTimeouts`). Connection-level failures (refused, timed
out, lost, a 421, a rejected greeting or EHLO) raise `SMTPConnectionError`: they concern the
destination's health, not a recipient. Per-recipient and per-message 4xx/5xx are returned.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from typing import NoReturn, Self, TypeVar

from msgspool.domain.outcome import CONNECTION_LOST, CONNECTION_REFUSED, CONNECTION_TIMEOUT, Reply
from msgspool.transports.smtp_security import CLEAR, SessionSecurity

log = logging.getLogger("msgspool.smtp")

T = TypeVar("T")


@dataclass(frozen=True)
class ClientTimeouts:
    """Seconds to wait at each stage; defaults are RFC 5321 §4.5.3.2's minimums, or Postfix's."""

    connect: float = 30.0  # Postfix smtp_connect_timeout
    greeting: float = 300.0  # §4.5.3.2.1 initial 220: 5 min
    helo: float = 300.0
    mail: float = 300.0  # §4.5.3.2.2; also used for RSET and NOOP
    rcpt: float = 300.0  # §4.5.3.2.3
    data_init: float = 120.0  # §4.5.3.2.4: 2 min
    data_block: float = 180.0  # §4.5.3.2.5: 3 min without progress while sending content
    data_done: float = 600.0  # §4.5.3.2.6: 10 min
    quit: float = 5.0


class SMTPConnectionError(Exception):
    """The session could not be set up or was lost: a connection-level failure (destination health)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class _HandshakeFailed(Exception):
    """The TLS handshake failed: at `may` a reason to try again in clear, else a deferral."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line())
        self.reply = reply


class _MalformedReply(ValueError):
    """A reply line that is not ``ddd[ -]text`` (§4.2); the stream can no longer be trusted."""


@dataclass
class TransactionResult:
    """The replies of one mail transaction."""

    mail: Reply
    rcpts: list[Reply]  # one per recipient, in order
    data: Reply | None  # None when DATA was not reached (no recipient accepted / MAIL rejected)
    # LMTP (RFC 2033 §4.2): one reply after the content per accepted recipient, in RCPT order
    finals: list[Reply] | None = None

    def outcomes(self) -> list[Reply]:
        """Per recipient: MAIL's reply if MAIL failed; else the RCPT reply if not 2xx; else DATA's
        (in LMTP, the recipient's own reply to the content)."""
        if not self.mail.ok:
            return [self.mail] * len(self.rcpts)
        if self.finals is not None:
            finals = iter(self.finals)
            return [next(finals, CONNECTION_LOST) if rcpt.ok else rcpt for rcpt in self.rcpts]
        data = self.data or CONNECTION_LOST
        return [data if rcpt.ok else rcpt for rcpt in self.rcpts]


def dot_stuff(content: bytes) -> bytes:
    """Content as sent after DATA: dot-stuffed (§4.5.2), CRLF-terminated, then the ``.`` line."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _command(verb: str, address: str, params: Sequence[str]) -> bytes:
    line = f"{verb}:<{address}>" + "".join(f" {param}" for param in params)
    # One pipelined write carries many commands: a line break inside an address would smuggle in more.
    if "\r" in line or "\n" in line:
        raise ValueError(f"line break in SMTP command argument: {line!r}")
    return line.encode() + b"\r\n"


def _parse_reply(code: int, texts: list[bytes]) -> Reply:
    reply = Reply.parse(code, b"\n".join(texts).decode("utf-8", "replace"))
    if reply.enhanced and len(texts) > 1:  # RFC 2034 §4 repeats the status code on every line
        reply = Reply(code, reply.enhanced, reply.text.replace(f"\n{reply.enhanced} ", "\n"))
    return reply


class SMTPClient:
    """One SMTP session; reuse it for several transactions while `usable`.

    A subclass speaks a dialect: `HELLO` names the greeting command and `HELO_FALLBACK` whether an
    old-style HELO may follow its refusal; `_deliver_content` reads what the server answers to the
    content (LMTP's per-recipient replies, lmtp_client.py)."""

    HELLO = "EHLO"
    HELO_FALLBACK = True

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeouts: ClientTimeouts, remote: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False
        self.timeouts = timeouts
        self.remote = remote
        self.extensions: dict[str, str] = {}
        self.host, self.port = remote, 0
        self.tls: tuple[str, str] | None = None  # (version, cipher) once the session is encrypted
        self.user: str | None = None  # the account it authenticated as

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        helo_name: str,
        timeouts: ClientTimeouts = ClientTimeouts(),
        local_address: str | None = None,
        security: SessionSecurity = CLEAR,
        address: str | None = None,
    ) -> Self:
        """Open the session: TCP (or implicit TLS) connect, greeting, EHLO (or HELO), STARTTLS and
        EHLO again, AUTH, as `security` asks. `address`: the IP address of `host` to connect to
        (an MX host's, as the transport looked it up); `host` stays the name TLS verifies."""
        try:
            return await cls._connect(host, port, helo_name, timeouts, local_address, security, address,
                                      starttls=True)
        except _HandshakeFailed as err:
            if security.level.required or security.implicit_tls:
                raise SMTPConnectionError(err.reply) from None
            # Postfix at `may`: a server that cannot finish a handshake still gets its mail, in clear.
            log.warning("%s; level may: trying again in clear", err.reply.text)
            return await cls._connect(host, port, helo_name, timeouts, local_address, security, address,
                                      starttls=False)

    @classmethod
    async def _connect(cls, host: str, port: int, helo_name: str, timeouts: ClientTimeouts,
                       local_address: str | None, security: SessionSecurity, address: str | None, *,
                       starttls: bool) -> Self:
        local = (local_address, 0) if local_address else None
        implicit = security.context if security.implicit_tls else None
        try:
            async with asyncio.timeout(timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    address or host, port, local_addr=local, ssl=implicit, server_hostname=host if implicit else None)
        except TimeoutError:
            raise SMTPConnectionError(CONNECTION_TIMEOUT) from None
        except ssl.SSLError as err:
            raise _HandshakeFailed(_tls_failure(host, port, err)) from None
        except ConnectionRefusedError:
            raise SMTPConnectionError(CONNECTION_REFUSED) from None
        except OSError as err:
            raise SMTPConnectionError(Reply(421, "4.4.1", f"connect to {host}:{port}: {err}")) from None
        peer = writer.get_extra_info("peername")
        client = cls(reader, writer, timeouts, f"{host}[{peer[0] if peer else '?'}]:{port}")
        client.host, client.port = host, port
        client.tls = _describe(writer.get_extra_info("ssl_object"))
        return await client._opened(helo_name, security if starttls else replace(security, context=None))

    async def _opened(self, helo_name: str, security: SessionSecurity) -> Self:
        """The session on a fresh connection: greeting, hello, TLS and AUTH as asked."""
        try:
            await self._open_session(helo_name, security)
        except BaseException:
            self.close()  # never leak the socket, even when cancelled
            raise
        return self

    async def _open_session(self, helo_name: str, security: SessionSecurity) -> None:
        greeting = await self._read(self.timeouts.greeting, "receiving the initial server greeting")
        if not greeting.ok:
            await self._give_up(greeting)
        await self._hello(helo_name)
        if self.tls is None and security.context is not None:
            await self._starttls(helo_name, security)
        if self.tls is None and security.level.required:
            await self._give_up(Reply(454, "4.7.5", f"TLS is required ({security.reason}) but {self.remote}"
                                      " does not offer STARTTLS"))
        if security.credentials is not None:
            await self._authenticate(security)

    async def _hello(self, helo_name: str) -> None:
        ehlo = await self._exchange(f"{self.HELLO} {helo_name}\r\n".encode(), self.timeouts.helo, self.HELLO)
        if ehlo.ok:
            self.extensions = _parse_extensions(ehlo.text)
            return
        if ehlo.temporary or self.tls is not None or not self.HELO_FALLBACK:
            await self._give_up(ehlo)
        # §3.2: a server that does not know EHLO answers 5xx; an old-style HELO session follows.
        helo = await self._exchange(f"HELO {helo_name}\r\n".encode(), self.timeouts.helo, "HELO")
        if not helo.ok:
            await self._give_up(helo)
        self.extensions = {}

    async def _starttls(self, helo_name: str, security: SessionSecurity) -> None:
        """RFC 3207: STARTTLS when offered, the handshake, then EHLO again (what was learnt in clear
        is forgotten, §4.2)."""
        if "STARTTLS" not in self.extensions:
            return
        reply = await self._exchange(b"STARTTLS\r\n", self.timeouts.helo, "STARTTLS")
        if reply.code != 220:
            if security.level.required:
                await self._give_up(Reply(454, "4.7.5", f"{self.remote} refused STARTTLS: {reply.line()}"))
            return  # at `may` the session goes on in clear, as the server asked
        if self._reader_buffered():
            # Anything after the 220 was sent before TLS: an injection attempt (CVE-2011-0411's mirror).
            await self._give_up(Reply(454, "4.7.5", f"{self.remote} sent data pipelined after its STARTTLS reply"))
        assert security.context is not None
        try:
            await self._writer.start_tls(security.context, server_hostname=self.host,
                                         ssl_handshake_timeout=self.timeouts.helo)
        except (OSError, TimeoutError) as err:  # ssl.SSLError is an OSError
            self.close()
            raise _HandshakeFailed(_tls_failure(self.host, self.port, err)) from None
        self.tls = _describe(self._writer.get_extra_info("ssl_object"))
        await self._hello(helo_name)

    def _reader_buffered(self) -> bool:
        return bool(getattr(self._reader, "_buffer", b""))

    async def _authenticate(self, security: SessionSecurity) -> None:
        """RFC 4954 AUTH PLAIN, or LOGIN when only that is offered; never in clear unless allowed."""
        credentials = security.credentials
        assert credentials is not None
        if self.tls is None and not security.auth_allowed_in_clear():
            await self._give_up(Reply(454, "4.7.0", f"not sending the password for {credentials.user} to"
                                      f" {self.remote} in clear: no TLS (smtp_tls_security_level={security.level})"))
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "AUTH" not in self.extensions:
            return  # a relay that offers no AUTH wants none (Postfix sends the mail all the same)
        try:
            password = credentials.password()
        except (OSError, ValueError) as err:
            await self._give_up(Reply(451, "4.3.5", f"cannot authenticate as {credentials.user}: {err}"))
        if "PLAIN" in mechanisms:
            reply = await self._auth_plain(credentials.user, password)
        elif "LOGIN" in mechanisms:
            reply = await self._auth_login(credentials.user, password)
        else:
            offered = " ".join(mechanisms) or "none"
            await self._give_up(Reply(454, "4.7.0", f"{self.remote} offers no AUTH mechanism msgspool has"
                                      f" (PLAIN, LOGIN); it offers {offered}"))
        if reply.code != 235:
            await self._give_up(_auth_failure(reply, credentials.user, self.remote, security.auth_soft_bounce))
        self.user = credentials.user

    async def _auth_plain(self, user: str, password: str) -> Reply:
        token = _b64(f"\0{user}\0{password}")
        reply = await self._exchange(b"AUTH PLAIN " + token + b"\r\n", self.timeouts.helo, "AUTH")
        if reply.code == 334:  # a server that wants the response after an empty challenge
            reply = await self._exchange(token + b"\r\n", self.timeouts.helo, "AUTH")
        return reply

    async def _auth_login(self, user: str, password: str) -> Reply:
        reply = await self._exchange(b"AUTH LOGIN\r\n", self.timeouts.helo, "AUTH")
        for answer in (user, password):
            if reply.code != 334:
                return reply
            reply = await self._exchange(_b64(answer) + b"\r\n", self.timeouts.helo, "AUTH")
        return reply

    async def _give_up(self, reply: Reply) -> NoReturn:
        await self.quit()  # §3.1: a server that refused us with 554 still waits for QUIT
        raise SMTPConnectionError(reply)

    @property
    def usable(self) -> bool:
        """False after a connection error or close, or once the peer has closed its side."""
        return not self._closed and not self._writer.transport.is_closing()

    @property
    def size_limit(self) -> int:
        """The server's SIZE limit in octets (RFC 1870); 0 when it announced none."""
        try:
            return int(self.extensions.get("SIZE", "").split()[0])
        except (IndexError, ValueError):
            return 0

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        *,
        mail_params: Sequence[str] = (),
        rcpt_params: Sequence[Sequence[str]] | None = None,
    ) -> TransactionResult:
        """One mail transaction: MAIL, a RCPT per recipient, DATA and the content if anyone accepted."""
        if not recipients:
            raise ValueError("a transaction needs at least one recipient")
        if not self.usable:
            raise SMTPConnectionError(CONNECTION_LOST)
        refusal = self._refusal(sender, recipients, content)
        if refusal is not None:
            return TransactionResult(refusal, [refusal] * len(recipients), None)
        mail_cmd = _command("MAIL FROM", sender, [*self._mail_params(sender, recipients, content), *mail_params])
        all_params = rcpt_params if rcpt_params is not None else [()] * len(recipients)
        rcpt_cmds = [_command("RCPT TO", rcpt, params) for rcpt, params in zip(recipients, all_params, strict=True)]
        try:
            return await self._transaction(mail_cmd, rcpt_cmds, content)
        except BaseException:
            self.close()  # cut short (lost, or cancelled): the session is in an unknown state
            raise

    def _refusal(self, sender: str, recipients: Sequence[str], content: bytes) -> Reply | None:
        """A reason to fail every recipient without talking to the server."""
        limit = self.size_limit
        if limit and len(content) > limit:
            return Reply(552, "5.3.4", f"message too big for the next hop (SIZE {limit})")
        if not ascii_envelope(sender, recipients) and "SMTPUTF8" not in self.extensions:
            return Reply(553, "5.6.7", "next hop does not support SMTPUTF8")
        return None

    def _mail_params(self, sender: str, recipients: Sequence[str], content: bytes) -> list[str]:
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={len(content)}")
        if "8BITMIME" in self.extensions and not content.isascii():
            params.append("BODY=8BITMIME")
        if not ascii_envelope(sender, recipients):
            params.append("SMTPUTF8")
        return params

    async def _transaction(self, mail_cmd: bytes, rcpt_cmds: list[bytes], content: bytes) -> TransactionResult:
        data: Reply | None
        if "PIPELINING" in self.extensions:
            mail, rcpts, data = await self._commands_pipelined(mail_cmd, rcpt_cmds)
        else:
            mail, rcpts, data = await self._commands_one_by_one(mail_cmd, rcpt_cmds)
        accepted = mail.ok and any(rcpt.ok for rcpt in rcpts)
        if data is not None and data.code == 354:
            if accepted:
                return await self._deliver_content(mail, rcpts, dot_stuff(content))
            # RFC 2920 §3.1 warns that some servers accept DATA with no valid recipient: end it empty.
            await self._end_empty_data()
        elif mail.ok:
            await self._reset_after_failure()
        return TransactionResult(mail, rcpts, data if accepted else None)

    async def _commands_pipelined(self, mail_cmd: bytes, rcpt_cmds: list[bytes]) -> tuple[Reply, list[Reply], Reply]:
        # RFC 2920 §3.1: DATA must end a group, so MAIL, every RCPT and DATA go out in one write.
        await self._write(b"".join([mail_cmd, *rcpt_cmds, b"DATA\r\n"]), self.timeouts.mail, "sending MAIL FROM")
        mail = await self._read(self.timeouts.mail, "receiving the reply to MAIL FROM")
        rcpts = [await self._read(self.timeouts.rcpt, "receiving the reply to RCPT TO") for _ in rcpt_cmds]
        # §3.1: every reply of the group must be read, DATA's even when nobody was accepted.
        data = await self._read(self.timeouts.data_init, "receiving the reply to DATA")
        return mail, rcpts, data

    async def _commands_one_by_one(
        self, mail_cmd: bytes, rcpt_cmds: list[bytes]
    ) -> tuple[Reply, list[Reply], Reply | None]:
        mail = await self._exchange(mail_cmd, self.timeouts.mail, "MAIL FROM")
        if not mail.ok:
            return mail, [mail] * len(rcpt_cmds), None
        rcpts = [await self._exchange(cmd, self.timeouts.rcpt, "RCPT TO") for cmd in rcpt_cmds]
        if not any(rcpt.ok for rcpt in rcpts):
            return mail, rcpts, None
        return mail, rcpts, await self._exchange(b"DATA\r\n", self.timeouts.data_init, "DATA")

    async def _deliver_content(self, mail: Reply, rcpts: list[Reply], wire: bytes) -> TransactionResult:
        """The content after a 354, and the server's answer to it: one reply for the message."""
        return TransactionResult(mail, rcpts, await self._send_content(wire))

    async def _end_empty_data(self) -> None:
        await self._send_content(b".\r\n")

    async def _send_content(self, wire: bytes) -> Reply:
        await self._write_content(wire)
        return await self._read(self.timeouts.data_done, "receiving the reply to end of DATA")

    async def _write_content(self, wire: bytes) -> None:
        self._writer.write(wire)
        await self._io(self._drained(), None, "sending message content")

    async def _drained(self) -> None:
        # §4.5.3.2.5 bounds each block sent, not the whole message: keep waiting while the peer reads.
        transport = self._writer.transport
        while True:
            pending = transport.get_write_buffer_size()
            try:
                async with asyncio.timeout(self.timeouts.data_block):
                    await self._writer.drain()
                return
            except TimeoutError:
                if transport.get_write_buffer_size() >= pending:
                    raise

    async def _reset_after_failure(self) -> None:
        # A half-open transaction must not leak into the next one (§4.1.1.5).
        if not (await self.reset()).ok:
            self.close()

    async def reset(self) -> Reply:
        """RSET: abort the current transaction."""
        return await self._exchange(b"RSET\r\n", self.timeouts.mail, "RSET")

    async def noop(self) -> Reply:
        """NOOP: check that the session is still alive (e.g. before reusing it)."""
        return await self._exchange(b"NOOP\r\n", self.timeouts.mail, "NOOP")

    async def quit(self) -> None:
        """QUIT with a short timeout, then close; never raises."""
        try:
            if self.usable:
                self._writer.write(b"QUIT\r\n")
                async with asyncio.timeout(self.timeouts.quit):
                    await self._read_reply()  # wait for 221 so the server closes first
        except Exception:  # an abandoned session has nothing left worth reporting
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Abort the connection; never raises."""
        self._closed = True
        self._writer.transport.abort()

    async def _exchange(self, line: bytes, timeout: float, verb: str) -> Reply:
        await self._write(line, timeout, f"sending {verb}")
        return await self._read(timeout, f"receiving the reply to {verb}")

    async def _write(self, data: bytes, timeout: float, stage: str) -> None:
        self._writer.write(data)
        await self._io(self._writer.drain(), timeout, stage)

    async def _read(self, timeout: float, stage: str) -> Reply:
        reply = await self._io(self._read_reply(), timeout, stage)
        if reply.code == 421:  # §3.8: the server is closing the channel
            self.close()
            raise SMTPConnectionError(reply)
        return reply

    async def _io(self, operation: Awaitable[T], timeout: float | None, stage: str) -> T:
        """Await one step under its timeout; any failure ends the session."""
        try:
            async with asyncio.timeout(timeout):
                return await operation
        except TimeoutError:
            failure = Reply(421, "4.4.2", f"conversation with the next hop timed out while {stage}")
        except OSError:
            failure = Reply(421, "4.4.2", f"{CONNECTION_LOST.text} while {stage}")
        except ValueError:  # _MalformedReply, or a line beyond the reader's 64 KiB limit
            failure = Reply(421, "4.4.2", "malformed reply")
        self.close()
        raise SMTPConnectionError(failure)

    async def _read_reply(self) -> Reply:
        """One reply, multi-line ones included (§4.2.1): the code comes from the last line."""
        texts: list[bytes] = []
        while True:
            line = await self._reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionResetError("connection closed by the server")
            line = line.rstrip(b"\r\n")
            code, separator = line[:3], line[3:4]  # separator b"": a bare code, also valid
            if not (len(code) == 3 and code.isdigit() and code[0] in b"2345" and separator in b" -"):
                raise _MalformedReply(line)
            texts.append(line[4:])
            if separator != b"-":
                return _parse_reply(int(code), texts)


def _describe(ssl_object: ssl.SSLObject | None) -> tuple[str, str] | None:
    """(protocol version, cipher) of an established TLS session, e.g. ("TLSv1.3", "TLS_AES_256_GCM_SHA384")."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return ssl_object.version() or "TLS", cipher[0] if cipher else "unknown"


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


def _tls_failure(host: str, port: int, err: BaseException) -> Reply:
    reason = getattr(err, "verify_message", None) or getattr(err, "reason", None) or str(err) or type(err).__name__
    return Reply(454, "4.7.5", f"TLS handshake with {host}:{port} failed: {reason}")


def _auth_failure(reply: Reply, user: str, remote: str, soft_bounce: bool) -> Reply:
    """The recipient's reply for a refused AUTH: the server's words, deferred unless it said 5xx and
    soft bounce is off."""
    text = f"authentication as {user} to {remote} failed: {reply.line()}"
    if reply.permanent and not soft_bounce:
        return Reply(reply.code, reply.enhanced or "5.7.8", text)
    enhanced = "4" + reply.enhanced[1:] if reply.enhanced else "4.7.0"
    return Reply(reply.code if reply.temporary else 454, enhanced, text)


def _parse_extensions(ehlo_text: str) -> dict[str, str]:
    """EHLO reply lines after the first (RFC 5321 §4.1.1.1): ``KEYWORD [params]``."""
    extensions = {}
    for line in ehlo_text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


def ascii_envelope(sender: str, recipients: Sequence[str]) -> bool:
    return sender.isascii() and all(rcpt.isascii() for rcpt in recipients)
