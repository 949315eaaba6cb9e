"""The roles providers play, as small Protocols (MAPI: IXPLogon for transports, IMsgStore for stores).

A transport is found by name in the ``msgspool.transports`` entry-point group and built with
``factory(name, settings, options)``; a store likewise in ``msgspool.stores``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from msgspool.domain.outcome import Reply


class Connection(Protocol):
    """An open path to one destination, reused for several messages."""

    remote: str  # for logs and Remote-MTA, e.g. "mx.example.org[192.0.2.1]:25"

    @property
    def usable(self) -> bool: ...

    async def send(self, sender: str, recipients: Sequence[str], content: bytes) -> list[Reply]:
        """Transmit one message; one reply per recipient. Raises DestinationUnavailable when the
        connection fails (the outcome of the message is then unknown: it is retried)."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """Moves messages to one kind of messaging system (MAPI transport provider)."""

    name: str
    addrtypes: frozenset[str]  # MAPI IXPLogon::AddressTypes
    domains: tuple[str, ...]  # domain routes; () = any domain

    def nexthop(self, address: str) -> str:
        """The destination an address goes to (a relay, the domain for MX lookup, a URL's origin)."""
        ...

    async def connect(self, nexthop: str) -> Connection:
        """Open a connection; raises DestinationUnavailable at the connection level."""
        ...

    async def close(self) -> None: ...


class TransportFactory(Protocol):
    def __call__(self, name: str, settings: Any, options: dict[str, Any]) -> Transport: ...
