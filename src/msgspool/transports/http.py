"""The HTTP transport: delivers a message by POSTing it to a URL (address type "HTTP").

The recipient's address is the URL. The body is the RFC 5322 message (`message/rfc822`); the
envelope travels in headers (`X-Msgspool-Sender`, `X-Msgspool-Message-Id`). The answer maps onto
SMTP's classes so status and reports speak one language:

    2xx            -> delivered
    408, 429, 5xx  -> deferred (the receiver may recover)
    other 4xx      -> failed
    no connection  -> the destination (the URL's origin) is marked down

Options: timeout (seconds, default 30), headers (a table of extra request headers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply
from msgspool.errors import DestinationUnavailable

HTTP = "HTTP"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def reply_for(status: int, reason: str) -> Reply:
    text = f"HTTP {status} {reason}".strip()
    if 200 <= status < 300:
        return Reply(250, "2.0.0", text)
    if status in (408, 429) or status >= 500:
        return Reply(451, "4.0.0", text)
    return Reply(550, "5.0.0", text)


class HTTPConnection:
    """POSTs to one origin over the transport's shared session. A subclass changes what is posted
    (`request`, `send_one`), not how the answer is read."""

    def __init__(self, session: aiohttp.ClientSession, origin: str, headers: dict[str, str]) -> None:
        self.session, self.remote, self.headers = session, origin, headers

    @property
    def usable(self) -> bool:
        return not self.session.closed

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        return [await self.send_one(message, r) for r in recipients]

    async def send_one(self, message: Message, recipient: Recipient) -> Reply:
        body, headers = self.request(message, recipient)
        return await self.post(recipient.address, body, {**headers, **self.headers})

    def request(self, message: Message, recipient: Recipient) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the POST for one recipient."""
        return message.full_content(), {"Content-Type": "message/rfc822", "X-Msgspool-Sender": message.sender,
                                        "X-Msgspool-Message-Id": message.id}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Reply:
        try:
            async with self.session.post(url, data=body, headers=headers) as response:
                await response.read()
                return reply_for(response.status, response.reason or "")
        except (aiohttp.ClientConnectionError, TimeoutError) as err:
            raise DestinationUnavailable(Reply(421, "4.4.1", f"{self.remote}: {err or type(err).__name__}")) \
                from err

    async def close(self) -> None:
        return None  # the session is shared per transport


class HTTPTransport:
    addrtypes = frozenset({HTTP})

    def __init__(self, name: str, settings: Any, options: dict[str, Any]) -> None:
        self.name = name
        self.domains: tuple[str, ...] = ()
        self.timeout = float(options.get("timeout", 30.0))
        self.headers = {str(k): str(v) for k, v in dict(options.get("headers", {})).items()}
        self._session: aiohttp.ClientSession | None = None

    def nexthop(self, address: str) -> str:
        return origin_of(address)

    async def connect(self, nexthop: str) -> HTTPConnection:
        await self._reachable(nexthop)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self.connection(self._session, nexthop)

    def connection(self, session: aiohttp.ClientSession, origin: str) -> HTTPConnection:
        return HTTPConnection(session, origin, self.headers)

    async def _reachable(self, origin: str) -> None:
        """Open and close a TCP connection to the origin, so a receiver that is down is noticed at
        the connection level (destination health) rather than once per message."""
        parts = urlsplit(origin)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), self.timeout)
        except (OSError, TimeoutError) as err:
            raise DestinationUnavailable(Reply(421, "4.4.1", f"{origin}: {err or 'timeout'}")) from err
        writer.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
