"""A real SMTP sink for tests: an asyncio server in its own thread, so sync and async tests can
both use it, stop it (the destination goes down) and start it again on the same port.

Per-recipient behaviour is scripted by local part: ``fail5xx-*`` gets 550, ``fail4xx-*`` gets 450.
Every accepted message is kept as (sender, recipients, content). `data_delay` makes it a slow next
hop: each message is answered that many seconds after its content arrived.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes


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
                asyncio.start_server(self._session, self.host, self.port, reuse_address=True))
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
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
        writer.write(b"220 sink ESMTP\r\n")
        sender, recipients = "", []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"MAIL", b"RCPT"):
                    self.commands.append(line.decode().rstrip("\r\n"))
                if verb in (b"EHLO", b"HELO"):
                    dsn = b"250-DSN\r\n" if self.dsn else b""
                    utf8 = b"250-SMTPUTF8\r\n" if self.smtputf8 else b""
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n" + dsn + utf8
                                 + b"250-8BITMIME\r\n250 SIZE 100000000\r\n")
                elif verb == b"MAIL":
                    sender, recipients = line.decode().split("<", 1)[1].split(">", 1)[0], []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    rcpt = line.decode().split("<", 1)[1].split(">", 1)[0]
                    if rcpt.startswith("fail5xx"):
                        writer.write(b"550 5.1.1 No such user here\r\n")
                    elif rcpt.startswith("fail4xx"):
                        writer.write(b"450 4.2.1 Mailbox busy, try later\r\n")
                    else:
                        recipients.append(rcpt)
                        writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    if not recipients:
                        writer.write(b"554 5.5.1 No valid recipients\r\n")
                        continue
                    writer.write(b"354 go ahead\r\n")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    content = data[:-3].replace(b"\r\n..", b"\r\n.")
                    if self.data_delay:
                        await asyncio.sleep(self.data_delay)
                    with self._lock:
                        self.messages.append(Received(sender, recipients, content))
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
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
