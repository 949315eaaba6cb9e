"""The bench's own SMTP sink, run as a separate process: ``python -m bench.sink --port P --log FILE``.

Accepts everything (PIPELINING advertised, replies in order) and appends one line per message to
FILE the moment its final dot arrived: ``<arrival time.time()> <X-Bench-Id or -> <X-Bench-Sent or ->``,
and ``#conn <time> <sessions open now>`` whenever a session opens or closes, flushed at once, so
the bench can count arrivals and compute submit -> sink latency from the stamp
the sending client put in the header, and `` tls`` after them when the message came over TLS
(``--tls-cert PEM`` offers STARTTLS). `SinkProcess` starts and reads it from the bench side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

ID_RE = re.compile(rb"^X-Bench-Id: *([^\r\n]+)\r?$", re.M | re.I)
SENT_RE = re.compile(rb"^X-Bench-Sent: *([0-9.]+)\r?$", re.M | re.I)


class Recorder:
    def __init__(self, out: IO[str], tls: ssl.SSLContext | None = None) -> None:
        self.out = out
        self.tls = tls  # offer STARTTLS with it
        self.open = 0  # sessions open now: what several senders together hold (issue 11.6)

    def connections(self, change: int) -> None:
        self.open += change
        self.out.write(f"#conn {time.time():.6f} {self.open}\n")
        self.out.flush()

    def record(self, data: bytes, encrypted: bool = False) -> None:
        arrival = time.time()
        head = data.split(b"\r\n\r\n", 1)[0]
        mid, sent = ID_RE.search(head), SENT_RE.search(head)
        self.out.write(f"{arrival:.6f} {mid.group(1).decode() if mid else '-'} "
                       f"{sent.group(1).decode() if sent else '-'}{' tls' if encrypted else ''}\n")
        self.out.flush()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 bench-sink ESMTP\r\n")
        encrypted = False
        self.connections(+1)
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    starttls = b"250-STARTTLS\r\n" if self.tls is not None and not encrypted else b""
                    writer.write(b"250-bench-sink\r\n250-PIPELINING\r\n" + starttls
                                 + b"250-8BITMIME\r\n250 SIZE 100000000\r\n")
                elif verb == b"STAR" and self.tls is not None and not encrypted:
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    await writer.drain()
                    await writer.start_tls(self.tls)
                    encrypted = True
                    continue
                elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    writer.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    lines = []
                    while (body_line := await reader.readline()) != b".\r\n":
                        if not body_line:
                            raise ConnectionError("connection closed in DATA")
                        lines.append(body_line)
                    self.record(b"".join(lines), encrypted)
                    writer.write(b"250 2.0.0 Ok: queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"502 5.5.2 Error: command not recognized\r\n")
                if not getattr(reader, "_buffer", None):  # pipelined commands: one drain for the lot
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            self.connections(-1)
            writer.close()


def server_context(pem: Path) -> ssl.SSLContext:
    """The sink's TLS context from one PEM file holding key and certificate chain."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(pem))
    return context


async def serve(host: str, port: int, log_path: Path, tls_pem: Path | None = None) -> None:
    with log_path.open("a") as out:
        recorder = Recorder(out, server_context(tls_pem) if tls_pem else None)
        server = await asyncio.start_server(recorder.session, host, port, reuse_address=True, limit=1 << 24,
                                            backlog=1024)
        async with server:
            await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sink")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--tls-cert", type=Path, help="PEM with key and certificate: offer STARTTLS")
    a = ap.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(a.host, a.port, a.log, a.tls_cert))


# -- the bench's side ---------------------------------------------------------------------------


class SinkProcess:
    """`python -m bench.sink` on `port`, its log read incrementally: `.count()`, `.records()`."""

    def __init__(self, port: int, log_path: Path, tls_pem: Path | None = None) -> None:
        self.port, self.log_path, self.tls_pem = port, log_path, tls_pem
        self.proc: subprocess.Popen[Any] | None = None
        self.up_at = 0.0
        self._offset = 0
        self._partial = b""
        self._records: list[tuple[float, str, float | None]] = []
        self.encrypted = 0  # how many of them came over TLS
        self.peak_connections = 0  # most sessions open at once
        self.connection_samples: list[tuple[float, int]] = []

    def start(self) -> SinkProcess:
        from bench.procs import REPO, Group, wait_port, wait_port_free

        wait_port_free(self.port)
        self.log_path.touch()
        tls = ["--tls-cert", str(self.tls_pem)] if self.tls_pem else []
        self.proc = Group.start([sys.executable, "-m", "bench.sink", "--port", str(self.port),
                                 "--log", str(self.log_path), *tls], cwd=REPO, stdout=subprocess.DEVNULL)
        self.up_at = wait_port(self.port, 30.0, self.proc, "bench sink")
        return self

    def stop(self) -> None:
        from bench.procs import Group

        if self.proc is not None:
            Group.stop(self.proc, timeout=5.0)
            self.proc = None

    def _read(self) -> None:
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"#conn "):
                _tag, when, now_open = line.decode().split(" ")
                self.connection_samples.append((float(when), int(now_open)))
                self.peak_connections = max(self.peak_connections, int(now_open))
                continue
            arrival, mid, sent, *tls = line.decode().split(" ")
            self.encrypted += tls == ["tls"]
            self._records.append((float(arrival), mid, None if sent == "-" else float(sent)))

    def count(self) -> int:
        self._read()
        return len(self._records)

    def peak(self, since: float = 0.0, until: float = float("inf")) -> int:
        """Most sessions open at once between `since` and `until` (wall times)."""
        self._read()
        return max((n for when, n in self.connection_samples if since <= when <= until), default=0)

    def records(self) -> list[tuple[float, str, float | None]]:
        self._read()
        return list(self._records)


if __name__ == "__main__":
    sys.exit(main())
