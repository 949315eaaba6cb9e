"""The bench's SMTP client (asyncio): plain sequential SMTP sessions, no pipelining, as smtp-source.

`blast` pushes N messages through S sessions as fast as the server answers (the Python stand-in for
smtp-source). `paced` submits at a fixed rate from a pool of persistent sessions; every message
carries ``X-Bench-Id`` and ``X-Bench-Sent: <time.time()>``, the stamp taken just before MAIL FROM,
which the sink (bench.sink) turns into a submit -> sink latency.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

SENDER = "bench@sender.example"
RCPT = "rcpt@dest.example"


class SMTPError(Exception):
    pass


def make_message(size: int, mid: str, sent: float | None = None) -> bytes:
    """About `size` bytes of RFC 5322 message with the bench's headers (no line starts with '.')."""
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: bench {mid}\r\nMessage-ID: <{mid}@bench.example>\r\n"
            f"X-Bench-Id: {mid}\r\n" + (f"X-Bench-Sent: {sent:.6f}\r\n" if sent is not None else "") + "\r\n")
    body_len = max(0, size - len(head))
    full, rest = divmod(body_len, 78)
    body = ("x" * 76 + "\r\n") * full + ("x" * (rest - 2) + "\r\n" if rest > 2 else "")
    return (head + body).encode()


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> Session:
        """A session after EHLO; with `tls`, after STARTTLS and EHLO again."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        session = cls(reader, writer)
        await session.expect(None, 220)
        await session.expect(b"EHLO bench.example\r\n", 250)
        if tls is not None:
            await session.expect(b"STARTTLS\r\n", 220)
            await asyncio.wait_for(writer.start_tls(tls, server_hostname=host), timeout)
            await session.expect(b"EHLO bench.example\r\n", 250)
        return session

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise SMTPError("connection closed")
            lines.append(line.decode(errors="replace").rstrip())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def expect(self, command: bytes | None, code: int) -> None:
        if command is not None:
            self.writer.write(command)
        got, text = await self.reply()
        if got != code:
            raise SMTPError(f"{command!r}: {text}")

    async def send(self, content: bytes, sender: str = SENDER, rcpt: str = RCPT) -> None:
        await self.expect(f"MAIL FROM:<{sender}>\r\n".encode(), 250)
        await self.expect(f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
        await self.expect(b"DATA\r\n", 354)
        self.writer.write(content + b".\r\n")
        await self.expect(None, 250)

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply(), 5)
        except (OSError, SMTPError, TimeoutError):
            pass
        self.writer.close()


@dataclass
class BlastResult:
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    started: float = 0.0  # time.time()
    finished: float = 0.0  # time.time() of the last 250


async def blast(host: str, port: int, n: int, sessions: int, size: int, tag: str = "b",
                tls: ssl.SSLContext | None = None) -> BlastResult:
    """n messages through `sessions` sessions (each with STARTTLS when `tls` is given); each message
    has a distinct X-Bench-Id."""
    result = BlastResult(started=time.time())
    counter = iter(range(n))
    template = make_message(size, f"{tag}-000000000")
    prefix = f"{tag}-".encode()

    async def client() -> None:
        try:
            session = await Session.open(host, port, tls=tls)
        except (OSError, SMTPError, TimeoutError) as err:
            result.errors.append(f"connect: {err}")
            return
        try:
            for i in counter:
                content = template.replace(prefix + b"000000000", prefix + b"%09d" % i)
                try:
                    await session.send(content)
                except SMTPError as err:
                    result.errors.append(str(err))
                    continue
                result.accepted += 1
        except OSError as err:
            result.errors.append(str(err))
        finally:
            await session.close()

    await asyncio.gather(*(client() for _ in range(sessions)))
    result.finished = time.time()
    return result


@dataclass
class PacedResult:
    sent: dict[str, float] = field(default_factory=dict)  # id -> stamp
    accept: list[float] = field(default_factory=list)  # seconds from MAIL to the 250 after DATA
    acked: dict[str, float] = field(default_factory=dict)  # id -> time.time() of that 250
    late: float = 0.0  # the worst delay behind schedule (the pool was busy)
    errors: list[str] = field(default_factory=list)


async def paced(host: str, port: int, rate: float, count: int, size: int, tag: str, pool: int = 8) -> PacedResult:
    """`count` messages at `rate` per second, each on whichever pooled session is free."""
    result = PacedResult()
    free: asyncio.Queue[Session] = asyncio.Queue()
    for _ in range(pool):
        free.put_nowait(await Session.open(host, port))
    tasks = []

    async def one(i: int) -> None:
        session = await free.get()
        mid = f"{tag}-{i:06d}"
        stamp = time.time()
        try:
            await session.send(make_message(size, mid, stamp))
            result.acked[mid] = time.time()
            result.accept.append(result.acked[mid] - stamp)
            result.sent[mid] = stamp
        except (OSError, SMTPError) as err:
            result.errors.append(f"{mid}: {err}")
            session = await Session.open(host, port)
        free.put_nowait(session)

    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            result.late = max(result.late, -delay)
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    while not free.empty():
        await free.get_nowait().close()
    return result


def run(coro):  # type: ignore[no-untyped-def]
    """asyncio.run, on uvloop when it is installed (as the daemon runs)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
