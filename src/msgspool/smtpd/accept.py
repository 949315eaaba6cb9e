"""The SMTP listeners' accept loop, which answers even when the process runs out of descriptors.

asyncio's own server, when ``accept()`` fails with EMFILE or ENFILE, stops accepting for a second
and leaves every new client hanging in the listen queue until its own timeout. This loop keeps
one descriptor in reserve (open on /dev/null): when accept fails for lack of descriptors, it gives
the reserve up, accepts the waiting client, tells it ``421 4.7.0`` (RFC 5321 §3.8: a server that
must refuse service sends 421 and closes), closes it and takes the reserve back. A client of the
implicit-TLS listener, which expects a handshake, is just closed. The sessions themselves are the
event loop's usual transports, made with ``loop.connect_accepted_socket``, on asyncio or uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable

log = logging.getLogger("msgspool.smtpd")

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_BATCH = 64  # connections accepted per readiness callback before others get the loop
RETRY_DELAY = 0.1  # seconds without accepting when even the reserve descriptor is gone


def _reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


class Listener:
    """Listening sockets whose connections become `protocol_factory()` sessions. Has the part of
    asyncio.Server that the daemon uses: `close()`, `sockets`."""

    def __init__(self, sockets: list[socket.socket], protocol_factory: Callable[[], asyncio.Protocol], *,
                 refusal: bytes, tls: ssl.SSLContext | None = None, handshake_timeout: float | None = None) -> None:
        self.sockets, self.protocol_factory, self.refusal = sockets, protocol_factory, refusal
        self.tls, self.handshake_timeout = tls, handshake_timeout
        self.shed = 0  # connections refused for lack of descriptors
        self._loop = asyncio.get_running_loop()
        self._reserve = _reserve()
        self._starting: set[asyncio.Task[object]] = set()
        self._closed = False
        self._warned_at = 0.0
        for sock in sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(sock)
                    return
                if err.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that client is gone already
                log.error("accept on %s failed: %s", sock.getsockname(), err)
                return
            self._start(conn)

    def _start(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._loop.connect_accepted_socket(
            self.protocol_factory, conn, ssl=self.tls, ssl_handshake_timeout=self.handshake_timeout))
        self._starting.add(task)
        task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[object]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a failed TLS handshake, a reset
            log.info("connection not started: %s", task.exception())

    def _out_of_descriptors(self, sock: socket.socket) -> None:
        self.shed += 1
        now = time.monotonic()
        if now - self._warned_at > 10.0:
            self._warned_at = now
            log.warning("out of file descriptors: new SMTP connections are refused with 421 4.7.0 (%d so far)",
                        self.shed)
        if self._reserve is None:
            self._reserve = _reserve()
            if self._reserve is None:  # someone took it: accept again in a moment instead of spinning
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(RETRY_DELAY, self._resume, sock)
                return
        os.close(self._reserve)
        self._reserve = None
        try:
            conn, _address = sock.accept()
        except OSError:
            pass
        else:
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                if self.refusal:
                    conn.send(self.refusal)
            conn.close()
        self._reserve = _reserve()

    def _resume(self, sock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)


async def listen(host: str, port: int, protocol_factory: Callable[[], asyncio.Protocol], *, refusal: bytes,
                 tls: ssl.SSLContext | None = None, handshake_timeout: float | None = None,
                 backlog: int = 1024) -> Listener:
    """Bind `host:port` (every address it resolves to; all interfaces for an empty host) and accept."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return Listener(sockets, protocol_factory, refusal=refusal, tls=tls, handshake_timeout=handshake_timeout)
