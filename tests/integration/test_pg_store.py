"""What is PostgreSQL's own in the PostgreSQL store (issue 11): migrations, claims of two nodes at
once, the state table as a trigger, and the notices between nodes — on a real server (skipped
outside CI when none answers; tests/support/pg.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from msgspool.domain.events import Event, EventType
from msgspool.domain.ids import new_id
from msgspool.domain.message import Message, Recipient
from msgspool.domain.recipient import Status
from msgspool.stores.postgresql import _EVENT_ORDER_LOCK, PostgresStore, migrations, schema_version, upgrade
from tests.support import pg


@pytest.fixture
def url() -> Iterator[str]:
    with pg.fresh_database() as found:
        yield found


@pytest.fixture
async def two(url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database, as two nodes have."""
    a, b = PostgresStore(url), PostgresStore(url)
    await a.open()
    await b.open()
    a.owner, b.owner = "node-a", "node-b"
    for store in (a, b):
        await store.register_node(store.owner, "host", 1, time.time(), 60.0)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def message(n_recipients: int = 1, status: Status = Status.QUEUED) -> Message:
    return Message(id=new_id(), sender="a@example.org", content=b"Subject: x\r\n\r\nbody\r\n",
                   recipients=[Recipient(address=f"r{i}@example.com", addrtype="SMTP", transport="smtp",
                                         nexthop="relay", status=status, index=i, next_attempt_at=0.0)
                               for i in range(n_recipients)],
                   submitted_at=time.time())


def test_upgrade_applies_each_migration_once_and_says_which(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema_version(conn) == 0
        first = upgrade(conn)
        again = upgrade(conn)
        assert first == [name for _v, name, _s in migrations()] and again == []
        assert schema_version(conn) == max(v for v, _n, _s in migrations())


async def test_two_nodes_claiming_at_once_never_claim_the_same_recipient(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    for _ in range(40):
        await a.submit(message(5))
    got_a, got_b = await asyncio.gather(a.claim(time.time(), 20), b.claim(time.time(), 20))
    claimed = [(m.id, r.index) for batch in (got_a, got_b) for m in batch for r in m.recipients]
    assert len(claimed) == len(set(claimed)) == 40
    rest = await a.claim(time.time(), 1000) + await b.claim(time.time(), 1000)
    everything = claimed + [(m.id, r.index) for m in rest for r in m.recipients]
    assert len(everything) == len(set(everything)) == 200


async def test_a_state_change_outside_the_table_is_refused_by_the_database(url: str) -> None:
    store = PostgresStore(url)
    await store.open()
    try:
        msg = message(1, Status.QUEUED)
        await store.submit(msg)
    finally:
        await store.close()
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.RaiseException,
                                                                      match="state change not allowed"):
        conn.execute("UPDATE recipients SET status = 'deferred' WHERE message_id = %s", (msg.id,))  # queued -> deferred


async def test_a_notice_reaches_the_other_node_once_per_commit_and_long_lists_are_split(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    heard: list[tuple[str, list[str]]] = []
    own: list[str] = []
    b.subscribe(lambda kind, ids: heard.append((kind, ids)))
    a.subscribe(lambda kind, ids: own.append(kind))
    await asyncio.sleep(0.3)  # LISTEN is in place (its first "due" is the catch-up look)
    heard.clear()
    own.clear()
    for _ in range(50):
        a.publish("due")  # fifty asks before one commit: one notice
    ids = [new_id() for _ in range(1000)]
    a.publish("cancel", ids)
    for _ in range(100):
        if sum(len(i) for k, i in heard if k == "cancel") == len(ids):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert [k for k, _ in heard].count("due") == 1
    cancels = [i for k, i in heard if k == "cancel"]
    assert len(cancels) > 1 and [i for chunk in cancels for i in chunk] == ids
    assert own == []  # a node does not hear itself


async def test_a_spool_in_another_schema_of_the_same_database_hears_nothing(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    a, _b = two
    with pg.fresh_database() as other_url:
        other = PostgresStore(other_url)
        await other.open()
        heard: list[str] = []
        other.subscribe(lambda kind, ids: heard.append(kind))
        try:
            await asyncio.sleep(0.3)
            heard.clear()
            a.publish("due")
            await a.counts()
            await asyncio.sleep(0.5)
        finally:
            await other.close()
    assert heard == []


async def test_leases_are_judged_by_the_database_clock_not_by_a_node_clock_that_is_off(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A node whose clock runs an hour behind keeps its lease; one an hour ahead rescues nothing of
    a live node: on several machines only the database's clock is common to all."""
    a, b = two
    a.clock = lambda: time.time() - 3600  # a's clock is an hour behind
    b.clock = lambda: time.time() + 3600  # b's an hour ahead
    assert await a.heartbeat(a.owner or "", a.clock(), 5.0)
    msg = message(3)
    await a.submit(msg)
    claimed = await a.claim(time.time(), 10)
    assert sum(len(m.recipients) for m in claimed) == 3
    assert await b.rescue(b.clock()) == 0
    listed = {n["owner"]: n for n in await b.nodes(b.clock())}
    assert listed[a.owner]["alive"] and listed[a.owner]["leases"] == 3
    assert await b.rescue(b.clock() + 6.0) == 3  # five seconds past a's lease, by any clock moved alike


async def test_a_heartbeat_is_never_queued_behind_a_write_that_waits_on_a_lock(
        url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    """A node's writes can wait on another machine's locks; its lease must still be renewed (in
    the nodes bench a beat behind the group commit took 1.6 s of a 3 s lease, and the node lost
    the lease and its in-flight mail went twice)."""
    a, _ = two
    msg = message(1)
    await a.submit(msg)
    with psycopg.connect(url) as other:  # another machine's transaction, holding the row
        other.execute("SELECT 1 FROM recipients WHERE message_id = %s FOR UPDATE", (msg.id,))
        blocked = asyncio.ensure_future(a.hold([msg.id], time.time()))
        await asyncio.sleep(0.3)
        assert not blocked.done()  # the writer waits on the lock
        assert await asyncio.wait_for(a.heartbeat("node-a", time.time(), 60.0), 5.0) is True
        assert not blocked.done()
        other.rollback()
    assert await asyncio.wait_for(blocked, 10.0) == [msg.id]


async def test_event_ids_come_in_commit_order_so_a_reader_going_on_from_its_last_id_misses_none(
        url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    """Node a records an event in a transaction that then waits on a lock; node b records one
    and commits. A reader going on from the last id it saw (SSE's Last-Event-ID, the webhook
    cursor) must still get a's event once it commits: ids were taken from the sequence as events
    were recorded, so a's id was below b's and the reader, past b's, skipped it for ever."""
    a, b = two
    msg = message(1)
    await a.submit(msg)
    seen = [e.id for e in await a.events_after(0, 10_000)]
    last = max(seen)
    with psycopg.connect(url) as other:
        other.execute("SELECT 1 FROM recipients WHERE message_id = %s FOR UPDATE", (msg.id,))
        # One batch of a's writer: an event, then a write that waits on the lock.
        first = asyncio.ensure_future(a.record_events([Event(EventType.SUBMITTED, "from-a", time.time())]))
        blocked = asyncio.ensure_future(a.hold([msg.id], time.time()))
        await asyncio.sleep(0.3)
        assert not first.done() and not blocked.done()
        await b.record_events([Event(EventType.SUBMITTED, "from-b", time.time())])
        read = await a.events_after(last, 10_000)
        assert [e.message_id for e in read] == ["from-b"]
        last = read[-1].id
        other.rollback()
    await asyncio.wait_for(asyncio.gather(first, blocked), 10.0)
    after = [e.message_id for e in await a.events_after(last, 10_000)]
    assert "from-a" in after  # not skipped: its id is above the one the reader saw


async def test_a_transaction_draws_its_event_ids_only_once_it_holds_the_event_order_lock(
        url: str, two: tuple[PostgresStore, PostgresStore]) -> None:
    """The lock and the insert of a batch's events are one statement: the id drawn must still
    come after the lock is granted. Were it drawn while the statement waits, an event committed
    meanwhile with a higher id would be read first and a's event, lower, skipped by the reader."""
    a, _b = two
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (_EVENT_ORDER_LOCK,))
        waiting = asyncio.ensure_future(a.record_events([Event(EventType.SUBMITTED, "waited", time.time())]))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # a waits on the lock
        row = other.execute("INSERT INTO events (time, type, message_id) VALUES (%s, 'submitted', 'meanwhile')"
                            " RETURNING id", (time.time(),)).fetchone()
        assert row is not None
        other.execute("SELECT pg_advisory_unlock(%s)", (_EVENT_ORDER_LOCK,))
        await asyncio.wait_for(waiting, 10.0)
    [waited] = [e for e in await a.events_after(0, 10_000) if e.message_id == "waited"]
    assert waited.id is not None and waited.id > row[0]


async def test_a_durable_write_commits_with_synchronous_commit_on_whatever_ran_before_it(url: str) -> None:
    """Outcomes commit with synchronous_commit off, set on the writer's session only when a batch
    needs the other setting; a submission (durable: its 250 waits for the WAL flush) must never
    inherit `off`, also not after a failed transaction undid a SET."""
    store = PostgresStore(url)
    await store.open()

    def setting(tx: Any) -> str:
        return str(tx.execute("SHOW synchronous_commit").fetchone()[0])

    def failing(tx: Any) -> None:
        tx.execute("SET synchronous_commit = off")
        raise RuntimeError("the batch fails after its SET")

    try:
        seen = []
        for durable in (False, False, True, True, False, True):
            seen.append(await store._write(setting, durable=durable))
        assert seen == ["off", "off", "on", "on", "off", "on"]
        with pytest.raises(RuntimeError):
            await store._write(failing, durable=True)
        assert await store._write(setting, durable=True) == "on"
        assert [await store._write(setting, durable=d) for d in (False, True)] == ["off", "on"]
    finally:
        await store.close()
