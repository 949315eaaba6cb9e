"""A third-party transport that raises where it is told to (issue 10.4: exceptions become states).

`FlakyTransport.raise_in` names the calls that raise a RuntimeError: "connect", "send", "close".
It delivers into `delivered` otherwise. It stands for any transport someone else wrote, bugs
included; the spooler must contain whatever it does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from msgspool.domain.message import Message, Recipient
from msgspool.domain.outcome import Reply


class FlakyConnection:
    remote = "flaky.example[192.0.2.7]"

    def __init__(self, transport: FlakyTransport) -> None:
        self.transport = transport

    @property
    def usable(self) -> bool:
        return True

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        self.transport.calls["send"] += 1
        if self.transport.gate is not None:  # a transaction that takes until the test opens the gate
            self.transport.sending.set()
            await self.transport.gate.wait()
        if "send" in self.transport.raise_in:
            raise RuntimeError("boom in send")
        self.transport.delivered += [r.address for r in recipients]
        return [Reply(250, "2.0.0", "taken") for _ in recipients]

    async def close(self) -> None:
        self.transport.calls["close"] += 1
        if "close" in self.transport.raise_in:
            raise RuntimeError("boom in close")


class FlakyTransport:
    def __init__(self, name: str = "flaky") -> None:
        self.name = name
        self.addrtypes = frozenset({"SMTP"})
        self.domains: tuple[str, ...] = ()
        self.raise_in: set[str] = set()
        self.delivered: list[str] = []
        self.calls: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.sending = asyncio.Event()  # set when a transaction waits at the gate

    def nexthop(self, address: str) -> str:
        return "flaky.example"

    async def connect(self, nexthop: str) -> FlakyConnection:
        self.calls["connect"] += 1
        if "connect" in self.raise_in:
            raise RuntimeError("boom in connect")
        return FlakyConnection(self)

    async def close(self) -> None:
        pass
