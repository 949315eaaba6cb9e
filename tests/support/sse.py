"""A Server-Sent Events client over a plain socket, for end-to-end tests: it speaks HTTP/1.0 (so
the body is the raw stream, not chunked), reads in its own thread, and stamps every event with the
monotonic time it arrived. `close(abrupt=True)` drops the connection with a TCP RST, as a client
that crashed or lost its network does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SseEvent:
    id: int
    type: str
    data: dict[str, Any]
    arrived: float  # time.monotonic()


@dataclass
class SseClient:
    port: int
    query: str = ""
    last_event_id: str | None = None
    events: list[SseEvent] = field(default_factory=list)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""  # of an error answer (not text/event-stream)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self._sock.settimeout(None)  # a quiet stream is not an error
        request = f"GET /api/events{'?' + self.query if self.query else ''} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        if self.last_event_id is not None:
            request += f"Last-Event-ID: {self.last_event_id}\r\n"
        self._sock.sendall((request + "\r\n").encode())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def opened(self, timeout: float = 10.0) -> SseClient:
        """Wait for the response head (the subscription exists once the server sent it)."""
        assert self._ready.wait(timeout), "no response head from /api/events"
        return self

    def _read(self) -> None:
        stream = self._sock.makefile("rb")
        try:
            self._read_head(stream)
            if self.headers.get("content-type", "").startswith("text/event-stream"):
                self._read_events(stream)
            else:
                self.body = stream.read()
        except OSError:
            pass
        finally:
            stream.close()
            self._ready.set()

    def _read_head(self, stream: Any) -> None:
        self.status = int(stream.readline().split()[1])
        while (line := stream.readline().decode().rstrip("\r\n")):
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._ready.set()

    def _read_events(self, stream: Any) -> None:
        current: dict[str, str] = {}
        for raw in stream:
            line = raw.decode().rstrip("\r\n")
            if line:
                if not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    current[name] = value
                continue
            if current:
                event = SseEvent(int(current["id"]), current["event"], json.loads(current["data"]), time.monotonic())
                with self._lock:
                    self.events.append(event)
                current = {}

    def received(self) -> list[SseEvent]:
        with self._lock:
            return list(self.events)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[SseEvent]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(got := self.received()) >= n:
                return got
            time.sleep(0.002)
        raise AssertionError(f"SSE client got {len(self.received())} of {n} events in {timeout}s: {self.received()}")

    def wait_closed(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the server did not close the response"

    def close(self, *, abrupt: bool = False) -> None:
        """Hang up: a FIN, or with `abrupt` a RST (SO_LINGER 0). SHUT_RD first only wakes the reader
        thread (the socket is really closed once its file is too); it sends nothing."""
        if abrupt:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD if abrupt else socket.SHUT_RDWR)
        self._thread.join(5)
        self._sock.close()
