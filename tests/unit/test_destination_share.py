"""A destination's connections shared between the live nodes of a spool (issue 11.6): each node
opens at most `concurrency // nodes` (at least one), takes up a bigger share at once when a node
stops, and closes the workers beyond a smaller share as their transactions end. A destination
another node found down is adopted without a connection, and up again likewise. In memory: a
transport whose transactions wait until the test lets them go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from msgspool.domain.health import ProbePolicy
from msgspool.domain.message import Message, Recipient, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.retry import RetryPolicy
from msgspool.spooler.destinations import Destination, DestinationLimits


class Held:
    """Connections whose transactions wait for `go`; counts the connections open at once."""

    name = "smtp"
    remote = "relay[192.0.2.1]"
    usable = True

    def __init__(self) -> None:
        self.open = self.peak = self.connects = 0
        self.go = asyncio.Event()

    async def connect(self, nexthop: str) -> Held:
        self.connects += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        return self

    async def send(self, message: Message, recipients: Sequence[Recipient]) -> list[Reply]:
        await self.go.wait()
        return [Reply(250, "2.0.0", "ok") for _ in recipients]

    async def close(self) -> None:
        self.open -= 1


def destination(transport: Held, nodes: list[int], settled: list[Settlement]) -> Destination:
    async def up(_dest: Destination) -> int:
        return 0

    return Destination(transport, "relay:25", DestinationLimits(concurrency=7, idle_time=5.0), RetryPolicy(),  # type: ignore[arg-type]
                       ProbePolicy(), settled.extend, on_up=up, nodes=lambda: nodes[0])


def enqueue(dest: Destination, count: int, prefix: str = "m") -> None:
    for i in range(count):
        m = Message(id=f"{prefix}{i}", sender="a@example.org", content=b"x", submitted_at=time.time(),
                    recipients=[Recipient(f"{prefix}{i}@example.com")])
        dest.enqueue(m, m.recipients)


async def settle_down() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_each_node_opens_its_share_and_more_when_a_node_stops() -> None:
    transport, nodes, settled = Held(), [3], []  # type: ignore[var-annotated]
    dest = destination(transport, nodes, settled)
    enqueue(dest, 10)
    await settle_down()
    assert dest.concurrency == 2 and dest.workers == 2 and transport.peak == 2  # 7 // 3
    nodes[0] = 2
    dest.resize()
    await settle_down()
    assert dest.workers == 3 and transport.open == 3
    transport.go.set()
    while len(settled) < 10:
        await asyncio.sleep(0.01)
    assert transport.peak == 3
    await dest.close()


async def test_workers_beyond_a_smaller_share_close_when_their_transaction_ends() -> None:
    transport, nodes, settled = Held(), [1], []  # type: ignore[var-annotated]
    dest = destination(transport, nodes, settled)
    enqueue(dest, 7)
    await settle_down()
    assert dest.workers == 7
    nodes[0] = 3  # two nodes joined
    enqueue(dest, 10, "later")
    transport.go.set()
    while len(settled) < 17:
        await asyncio.sleep(0.01)
        assert transport.open <= 7
    await settle_down()
    assert dest.workers <= 2 and transport.open <= 2
    await dest.close()


async def test_another_node_s_down_and_up_are_adopted_without_a_connection() -> None:
    transport, nodes, settled = Held(), [2], []  # type: ignore[var-annotated]
    dest = destination(transport, nodes, settled)
    dest.limits = DestinationLimits(concurrency=0)  # nothing starts: the queue stays readable
    enqueue(dest, 2)
    dest.heard(True)
    assert dest.health.down and not dest.jobs and transport.connects == 0
    assert [(s.status.value, s.wait_destination, s.attempted) for s in settled] == [("deferred", True, False)] * 2
    dest.heard(False)
    await settle_down()
    assert not dest.health.down and transport.connects == 0
    await dest.close()
