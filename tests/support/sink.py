"""A real SMTP sink for tests: an asyncio server in its own thread, so sync and async tests can
both use it, stop it (the destination goes down) and start it again on the same port.

Per-recipient behaviour is scripted by local part: ``fail5xx-*`` gets 550, ``fail4xx-*`` gets 450.
Every accepted message is kept as (sender, recipients, content), with the TLS version and the
account of its session. `greeting` replaces the 220 greeting, `rcpt_reply` every RCPT's answer;
`hangup_on` drops the session at that verb. `data_delay` makes it a slow next
hop: each message is answered that many seconds after its content arrived; `data_gate` (a
threading.Event) holds each answer until the test sets it (at most 60 s).

TLS and AUTH, for the outbound security tests: `tls` (an SSLContext, e.g. from a trustme
certificate) offers STARTTLS, or with `implicit_tls` wraps every session from the first byte (port
465 style); `starttls_reply` answers STARTTLS with something else, and `break_tls` says 220 and
then hangs up instead of a handshake. `accounts` (user -> password) offers AUTH with `auth_mechanisms`,
only over TLS unless `auth_in_clear`, and then refuses MAIL before AUTH (530); a wrong password
gets `auth_failure`. `verbs` lists every command verb in order, with "TLS" where a handshake ended.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import time
from dataclasses import dataclass, field

from bench.ports import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes
    tls: str | None = None  # e.g. "TLSv1.3"
    user: str | None = None  # the account the session authenticated as


@dataclass
class Sink:
    port: int = 0
    host: str = "127.0.0.1"
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    dsn: bool = False  # advertise DSN (RFC 3461)
    smtputf8: bool = False  # advertise SMTPUTF8 (RFC 6531)
    commands: list[str] = field(default_factory=list)  # every MAIL and RCPT line, as received
    data_delay: float = 0.0  # seconds before the reply to the end of data
    in_data: int = 0  # transactions whose data has arrived and whose reply is held back (data_delay, data_gate)
    data_gate: threading.Event | None = None  # with it: the reply to the end of data waits until it is set
    tls: ssl.SSLContext | None = None  # offer STARTTLS with this server context
    implicit_tls: bool = False  # with `tls`: every session is TLS from the start
    starttls_reply: bytes = b"220 2.0.0 Ready to start TLS\r\n"
    break_tls: bool = False  # answer STARTTLS with 220, then hang up
    accounts: dict[str, str] = field(default_factory=dict)  # offer AUTH for these users
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    auth_in_clear: bool = False
    auth_failure: bytes = b"535 5.7.8 Authentication credentials invalid\r\n"
    verbs: list[str] = field(default_factory=list)
    greeting: bytes = b"220 sink ESMTP\r\n"  # e.g. b"421 4.3.2 busy\r\n": a host that turns sessions away
    rcpt_reply: bytes = b""  # when set, the answer to every RCPT (e.g. b"451 4.3.0 try later\r\n")
    hangup_on: bytes = b""  # a verb (e.g. b"MAIL") at which the sink drops the connection unanswered
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Sink:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._session, self.host, self.port, reuse_address=True, limit=1 << 24,
                                     ssl=self.tls if self.implicit_tls else None))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self.data_gate is not None:
            self.data_gate.set()  # a session waiting at the gate ends with the rest
        loop = self._loop

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        loop.close()
        self._loop = None

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(self, n: int, timeout: float = 10.0) -> float:
        """Block until `n` messages arrived; returns when (monotonic) the n-th came."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count() >= n:
                return time.monotonic()
            time.sleep(0.01)
        raise AssertionError(f"sink got {self.count()} of {n} messages in {timeout}s")

    async def async_wait_for(self, n: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count() >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"sink got {self.count()} of {n} messages in {timeout}s")

    def recipients(self) -> list[str]:
        with self._lock:
            return [r for m in self.messages for r in m.recipients]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.greeting)
        state = _SessionState(tls=_tls_version(writer))
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                self.verbs.append(line.split(b" ", 1)[0].strip().upper().decode())
                if verb in (b"MAIL", b"RCPT"):
                    self.commands.append(line.decode().rstrip("\r\n"))
                if self.hangup_on and verb == self.hangup_on[:4].upper():
                    break
                if verb in (b"EHLO", b"HELO"):
                    writer.write(self._ehlo_reply(state))
                elif verb == b"STAR":
                    if not await self._starttls(writer, state):
                        break
                    continue
                elif verb == b"AUTH":
                    writer.write(await self._auth(line, reader, writer, state))
                elif verb == b"MAIL":
                    if self.accounts and state.user is None:
                        writer.write(b"530 5.7.0 Authentication required\r\n")
                    else:
                        state.sender, state.recipients = line.decode().split("<", 1)[1].split(">", 1)[0], []
                        writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    rcpt = line.decode().split("<", 1)[1].split(">", 1)[0]
                    if self.rcpt_reply:
                        writer.write(self.rcpt_reply)
                    elif rcpt.startswith("fail5xx"):
                        writer.write(b"550 5.1.1 No such user here\r\n")
                    elif rcpt.startswith("fail4xx"):
                        writer.write(b"450 4.2.1 Mailbox busy, try later\r\n")
                    else:
                        state.recipients.append(rcpt)
                        writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    if not state.recipients:
                        writer.write(b"554 5.5.1 No valid recipients\r\n")
                        continue
                    writer.write(b"354 go ahead\r\n")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    content = data[:-3].replace(b"\r\n..", b"\r\n.")
                    self.in_data += 1
                    try:
                        if self.data_delay:
                            await asyncio.sleep(self.data_delay)
                        if self.data_gate is not None:
                            await asyncio.to_thread(self.data_gate.wait, 60.0)
                    finally:
                        self.in_data -= 1
                    with self._lock:
                        self.messages.append(Received(state.sender, state.recipients, content, state.tls, state.user))
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                elif verb == b"RSET" or verb == b"NOOP":
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"502 5.5.2 Error\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def _ehlo_reply(self, state: _SessionState) -> bytes:
        lines = [b"sink", b"PIPELINING"]
        if self.dsn:
            lines.append(b"DSN")
        if self.smtputf8:
            lines.append(b"SMTPUTF8")
        if self.tls is not None and state.tls is None:
            lines.append(b"STARTTLS")
        if self.accounts and (state.tls is not None or self.auth_in_clear):
            lines.append(b"AUTH " + " ".join(self.auth_mechanisms).encode())
        lines += [b"8BITMIME", b"SIZE 100000000"]
        return b"".join(b"250-" + line + b"\r\n" for line in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"

    async def _starttls(self, writer: asyncio.StreamWriter, state: _SessionState) -> bool:
        """RFC 3207 on the server side; False when the session is over."""
        if self.tls is None or state.tls is not None:
            writer.write(b"502 5.5.1 STARTTLS not offered\r\n")
            await writer.drain()
            return True
        writer.write(self.starttls_reply)
        await writer.drain()
        if not self.starttls_reply.startswith(b"220"):
            return True
        if self.break_tls:
            writer.transport.abort()
            return False
        await writer.start_tls(self.tls)
        state.reset(tls=_tls_version(writer))  # §4.2: the session starts over
        self.verbs.append("TLS")
        return True

    async def _auth(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    state: _SessionState) -> bytes:
        words = line.decode().split()
        mechanism = words[1].upper() if len(words) > 1 else ""
        if not self.accounts or (state.tls is None and not self.auth_in_clear) or state.user is not None:
            return b"503 5.5.1 AUTH not available\r\n"
        if mechanism not in self.auth_mechanisms:
            return b"504 5.5.4 Unrecognized authentication type\r\n"

        async def ask(challenge: str) -> str:
            writer.write(b"334 " + base64.b64encode(challenge.encode()) + b"\r\n")
            await writer.drain()
            return base64.b64decode((await reader.readline()).strip()).decode()

        if mechanism == "PLAIN":
            response = base64.b64decode(words[2]).decode() if len(words) > 2 else await ask("")
            _, user, password = response.split("\0")
        else:
            user, password = await ask("Username:"), await ask("Password:")
        if self.accounts.get(user) != password:
            return self.auth_failure
        state.user = user
        return b"235 2.7.0 Authentication successful\r\n"


@dataclass
class _SessionState:
    tls: str | None = None
    user: str | None = None
    sender: str = ""
    recipients: list[str] = field(default_factory=list)

    def reset(self, tls: str | None) -> None:
        self.tls, self.user, self.sender, self.recipients = tls, None, "", []


def _tls_version(writer: asyncio.StreamWriter) -> str | None:
    ssl_object = writer.get_extra_info("ssl_object")
    return ssl_object.version() if ssl_object is not None else None


