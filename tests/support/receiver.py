"""A real webhook receiver for tests: an aiohttp server in its own thread (like `Sink`), so sync
and async tests can both use it, stop it (the receiver goes down) and start it again on the same
port. Every POST is kept with its headers and raw body; `status` is what it answers.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.sink import free_port


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class Receiver:
    port: int = 0
    status: int = 204
    posts: list[Post] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.port == 0:
            self.port = free_port()
        self._lock = threading.Lock()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(5), "receiver did not start"
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def _receive(self, request: web.Request) -> web.Response:
        post = Post(request.path, dict(request.headers), await request.read())
        with self._lock:
            self.posts.append(post)
        return web.Response(status=self.status)

    def stop(self) -> None:
        if self._loop is None:
            return
        loop, self._loop = self._loop, None
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        loop.close()

    def received(self) -> list[Post]:
        with self._lock:
            return list(self.posts)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Post]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.received()) >= n:
                return self.received()
            time.sleep(0.01)
        raise AssertionError(f"receiver got {len(self.received())} of {n} POSTs in {timeout}s: {self.received()}")

    async def async_wait_for(self, n: int, timeout: float = 10.0) -> list[Post]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.received()) >= n:
                return self.received()
            await asyncio.sleep(0.01)
        raise AssertionError(f"receiver got {len(self.received())} of {n} POSTs in {timeout}s: {self.received()}")
