"""Leases (issue 11.4): a delivery node holds what it claims under one lease its heartbeat renews;
only the work of nodes without a live lease is rescued, by any node; a node that lost its lease
can never record over the work of the one that took it. Two nodes are two stores on one spool,
as two processes would be."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from msgspool.domain.events import EventType
from msgspool.domain.message import Message, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from msgspool.spooler.intake import mark_active
from tests.contract.conftest import build, statuses

OK = Reply(250, "2.0.0", "ok")
RETENTION = 7 * 86400.0  # longer than any store keeps a dead node's row


@asynccontextmanager
async def node(new_store: Callable[[], Store], owner: str, lease_time: float = 60.0) -> AsyncIterator[Store]:
    """A store on the spool working as node `owner`, registered now."""
    store = new_store()
    await store.open()
    try:
        await store.register_node(owner, "host", 1, time.time(), lease_time)
        store.owner = owner
        yield store
    finally:
        await store.close()


def handed(*recipients: str) -> Message:
    """A message with its recipients due now and marked active: a hand-over as intake commits it."""
    message, _ = build(*recipients)
    mark_active(message)
    return message


def delivered(message: Message) -> list[Settlement]:
    return [Settlement(message.id, r.index, r.address, Status.DELIVERED, OK) for r in message.recipients]


async def owners(store: Store, message: Message) -> list[str | None]:
    held = {(m, i): o for m, i, o in await store.active_recipients()}
    return [held.get((message.id, r.index)) for r in message.recipients]


async def history(store: Store, message_id: str) -> list[tuple[str, str]]:
    info = await store.get(message_id)
    assert info is not None
    return [(h["stage"], h["detail"]) for h in info.history or []]


async def test_a_settlement_is_refused_once_the_nodes_work_was_rescued(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "node-a", lease_time=0.2) as a:
        message = handed("b@example.com", "c@example.com")  # two outcomes: one statement on PostgreSQL
        await a.submit(message)
        assert await owners(a, message) == ["node-a"] * 2
        await asyncio.sleep(0.3)  # node-a stalls past its lease
        async with node(new_store, "node-b") as b:
            assert await b.rescue(time.time()) == 2
            assert await statuses(b, message.id) == ["queued"] * 2
            [claimed] = await b.claim(time.time(), 10)
            assert await owners(b, message) == ["node-b"] * 2
            # node-a wakes up and records its outcomes: refused, nothing written, no event
            assert await a.settle(delivered(message), time.time()) == []
            assert await a.unclaim([(message.id, 0)], time.time()) == []
            assert await owners(b, message) == ["node-b"] * 2
            assert await a.heartbeat("node-a", time.time(), 0.2) is False  # a dead lease is never renewed
            assert await a.claim(time.time(), 10) == []  # and a dead node claims nothing
            events = await b.settle(delivered(claimed), time.time())
            assert [e.type for e in events] == [EventType.DELIVERED] * 2
            assert await statuses(b, message.id) == ["delivered"] * 2
            assert any(stage == "rescue" and "node-a" in detail for stage, detail in await history(b, message.id))


async def test_a_rescue_takes_only_the_work_of_nodes_without_a_live_lease(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "live") as live, node(new_store, "expired", lease_time=0.2) as expired:
        mine, theirs, unknown = handed("live@example.com"), handed("expired@example.com"), handed("x@example.com")
        await live.submit(mine)
        await expired.submit(theirs)
        await live.register_node("pruned", "host", 1, time.time(), 0.2)
        await live.submit(unknown, owner="pruned")
        await asyncio.sleep(0.3)
        assert await live.rescue(time.time()) == 2
        assert await owners(live, mine) == ["live"]
        assert await statuses(live, theirs.id) == ["queued"]
        assert await statuses(live, unknown.id) == ["queued"]
        assert await live.rescue(time.time()) == 0
        nodes = {n["owner"]: n for n in await live.nodes(time.time())}
        assert (nodes["live"]["alive"], nodes["live"]["leases"]) == (True, 1)
        assert (nodes["expired"]["alive"], nodes["expired"]["leases"]) == (False, 0)
        assert set(nodes["live"]) >= {"owner", "host", "pid", "started_at", "heartbeat_at", "lease_until",
                                        "leases", "alive"}


async def test_a_node_reads_the_active_recipients_it_holds_and_no_others(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "a") as a, node(new_store, "b") as b:
        mine, theirs = handed("a1@example.com", "a2@example.com"), handed("b@example.com")
        await a.submit(mine)
        await b.submit(theirs)
        assert sorted(await a.active_recipients("a")) == [(mine.id, 0, "a"), (mine.id, 1, "a")]
        assert await a.active_recipients("b") == [(theirs.id, 0, "b")]
        assert len(await a.active_recipients()) == 3


async def test_a_node_without_a_row_claims_nothing_and_is_refused_a_hand_over(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "gone") as store:
        await store.retire_node("gone", time.time())
        await submit_queued(store)
        assert await store.claim(time.time(), 10) == []
        message = handed("c@example.com")
        await store.submit(message, owner="gone")
        assert await statuses(store, message.id) == ["queued"]
        assert await store.heartbeat("gone", time.time(), 60.0) is False


async def submit_queued(store: Store) -> Message:
    message, _ = build("b@example.com")
    await store.submit(message)
    return message


async def test_long_dead_nodes_are_pruned_once_their_work_is_rescued(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "dead", lease_time=0.5) as dead:
        message = handed("b@example.com")
        await dead.submit(message)
        await asyncio.sleep(0.6)
        later = time.time() + RETENTION
        assert await dead.rescue(later) == 1
        assert await dead.nodes(later) == []
        assert await statuses(dead, message.id) == ["queued"]


async def test_the_rescue_gives_back_a_held_message_held(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "dead", lease_time=0.5) as dead:
        message = handed("b@example.com")
        await dead.submit(message)
        await dead.hold([message.id], time.time())
        await asyncio.sleep(0.6)
        async with node(new_store, "other") as other:
            assert await other.rescue(time.time()) == 1
            assert await statuses(other, message.id) == ["held"]


async def test_a_hand_over_to_a_node_whose_lease_ran_out_is_refused_but_the_message_is_kept(
        new_store: Callable[[], Store]) -> None:
    async with node(new_store, "dead", lease_time=0.1) as dead:
        await asyncio.sleep(0.2)
        message = handed("b@example.com")
        await dead.submit(message, owner="dead")
        assert [r.status for r in message.recipients] == [Status.QUEUED]  # the caller must not hand it on
        assert await statuses(dead, message.id) == ["queued"]


async def test_a_node_that_registers_as_sole_ends_every_other_lease_at_once(new_store: Callable[[], Store]) -> None:
    """SQLite: the delivery lock proves the earlier nodes are dead, so a restart rescues their work
    at once rather than a lease time later."""
    async with node(new_store, "crashed", lease_time=3600.0) as crashed:
        message = handed("b@example.com")
        await crashed.submit(message)
        restarted = new_store()
        await restarted.open()
        try:
            await restarted.register_node("restarted", "host", 2, time.time(), 3600.0, sole=True)
            assert await restarted.rescue(time.time()) == 1
            nodes = {n["owner"]: n["alive"] for n in await restarted.nodes(time.time())}
        finally:
            await restarted.close()
    assert nodes == {"crashed": False, "restarted": True}


async def test_a_reused_node_identity_is_refused(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "once") as store:
        with pytest.raises(Exception):  # noqa: B017 (each store raises its own integrity error)
            await store.register_node("once", "host", 1, time.time(), 60.0)


async def test_a_retired_node_gives_back_what_it_still_holds_and_leaves_no_row(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "leaving") as store:
        message = handed("b@example.com")
        await store.submit(message)
        assert await store.retire_node("leaving", time.time()) == 1
        assert await store.nodes(time.time()) == []
        assert await statuses(store, message.id) == ["queued"]


async def test_a_node_whose_lease_ran_out_writes_no_report(new_store: Callable[[], Store]) -> None:
    async with node(new_store, "dead", lease_time=0.5) as dead:
        message = handed("fail@example.com")
        await dead.submit(message)
        failed = [Settlement(message.id, 0, "fail@example.com", Status.FAILED, Reply(550, "5.1.1", "no such user"))]
        await dead.settle(failed, time.time())
        [owed] = await dead.pending_reports()
        await asyncio.sleep(0.6)
        debt = [(r["index"], r["action"]) for r in owed.recipients]
        assert await dead.reported(message.id, debt, None) == []
        assert [p.message_id for p in await dead.pending_reports()] == [message.id]  # still owed, for a live node
