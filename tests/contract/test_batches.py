"""Writes that share a group commit: each submission and each outcome is stored as if alone.

The engines run a batch's submissions, and its outcomes, as one call (stores/base.py run_jobs),
and PostgreSQL writes their rows with one statement per table (the many-rows forms of
sql/postgresql_queries.sql). Nothing of that may show: every message gets its own content, its own
recipients in order, its own events; an outcome the guard refuses (settled already, or another
node's) changes nothing; a message leaves the outbox when its last recipient is final."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from msgspool.domain.message import Message, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from msgspool.stores import ops
from tests.contract.conftest import build, statuses

OK = Reply(250, "2.0.0", "ok")
BUSY = Reply(451, "4.3.0", "busy")
GONE = Reply(550, "5.1.1", "no such user")


def body(n: int) -> bytes:
    return f"From: a@example.org\r\nTo: r{n}@example.com\r\nSubject: batch {n}\r\n\r\n{'x' * n}\r\n".encode()


async def test_submissions_sharing_a_commit_each_keep_their_own_content_recipients_and_events(store: Store) -> None:
    now = time.time()
    built = [build(*[f"r{n}-{k}@example.com" for k in range(1 + n % 3)], now=now, content=body(n),
                   priority=n % 3 - 1, **({"deliver_after": now + 60} if n == 5 else {}))
             for n in range(12)]
    built.append(build("bob@example.org", "r-mixed@example.com", now=now, content=body(99)))  # a local copy too
    odd, _ = built[7]  # what a row carries besides plain text: bytes, a non-ASCII subject, metadata
    odd.headers_prefix = b"Received: from client.test\r\n"
    odd.content = b"Subject: =?utf-8?q?caf=C3=A9_=E2=82=AC?=\r\n\r\nx\r\n"
    odd.meta = {"http_token": "t\u00e9st", "n": 1.5}
    commits = store.commit_stats[0]
    events = await asyncio.gather(*(store.submit(message, copies) for message, copies in built))
    assert store.commit_stats[0] - commits < len(built) or type(store).__name__ == "MemoryStore"
    every = [e.id for own in events for e in own]
    assert len(set(every)) == len(every) and all(isinstance(i, int) for i in every)
    assert [e.id for e in await store.events_after(0)] == sorted(every)  # the log as a reader sees it
    assert (await store.get(odd.id)).subject == "café €"  # type: ignore[union-attr]
    for (message, copies), own in zip(built, events, strict=True):
        assert await store.content(message.id) == message.headers_prefix + message.content
        info = await store.get(message.id)
        assert info is not None and info.priority == message.priority and info.size == message.size
        assert [r["address"] for r in info.recipients] == [r.address for r in message.recipients]
        assert info.deliver_after == message.deliver_after
        assert {e.message_id for e in own} <= {message.id, *(c.id for c in copies)}
        assert next(e.type for e in own if e.message_id == message.id) == "submitted"
        assert [e.id for e in own] == sorted(e.id for e in own)  # in the order recorded
        for copy in copies:  # filed with the trace headers of local delivery before the shared content
            filed = await store.content(copy.id)
            assert filed is not None and filed.endswith(message.content) and b"Delivered-To: bob@" in filed


async def test_outcomes_sharing_a_commit_are_each_written_once_under_their_guard(store: Store) -> None:
    now = time.time()
    built = [build(f"r{n}@example.com", f"s{n}@example.com", now=now, content=body(n)) for n in range(6)]
    for message, copies in built:
        await store.submit(message, copies)
    claimed = {m.id for m in await store.claim(now, 100)}
    assert claimed == {message.id for message, _ in built}
    first, second, third, fourth, fifth, sixth = (message for message, _ in built)

    def settle(message: Message, index: int, status: Status, reply: Reply, **kw: Any) -> list[Settlement]:
        return [Settlement(message.id, index, message.recipients[index].address, status, reply, **kw)]

    calls = [
        settle(first, 0, Status.DELIVERED, OK) + settle(first, 1, Status.DELIVERED, OK),  # finished
        settle(second, 0, Status.DEFERRED, BUSY, next_attempt_at=now + 300),
        settle(second, 1, Status.FAILED, GONE),
        settle(third, 0, Status.FAILED, GONE) + settle(third, 1, Status.DELIVERED, OK),  # finished
        settle(fourth, 0, Status.DELIVERED, OK),
        settle(fourth, 0, Status.FAILED, GONE),  # the same recipient again: finds it settled
        settle(fifth, 1, Status.DELIVERED, OK),
    ]
    results = await asyncio.gather(*(store.settle(call, now) for call in calls))
    for call, events in zip(calls, results, strict=True):
        assert {(e.message_id, e.recipient) for e in events if e.recipient} <= {(s.message_id, s.address)
                                                                                for s in call}
    assert results[5] == []  # refused by the guard: nothing recorded
    assert await statuses(store, first.id) == ["delivered", "delivered"]
    assert await statuses(store, second.id) == ["deferred", "failed"]
    assert await statuses(store, third.id) == ["failed", "delivered"]
    assert await statuses(store, fourth.id) == ["delivered", "active"]
    assert await statuses(store, fifth.id) == ["active", "delivered"]
    assert await statuses(store, sixth.id) == ["active", "active"]
    folders = {m.id: (await store.get(m.id)).folder for m in (first, second, third, fourth)}  # type: ignore[union-attr]
    assert folders == {first.id: "sent", second.id: "outbox", third.id: "sent", fourth.id: "outbox"}
    info = await store.get(second.id)
    assert info is not None and info.recipients[0]["next_attempt_at"] == now + 300
    owed = {(p.message_id, r["address"]) for p in await store.pending_reports() for r in p.recipients}
    assert {(second.id, "s1@example.com"), (third.id, "r2@example.com")} <= owed


async def test_big_contents_in_a_batch_go_in_statements_of_a_bounded_size_each_to_its_message(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Contents travel in one parameter per statement (PostgreSQL): a batch is split into runs of
    at most CONTENTS_PER_STATEMENT bytes, and one bigger than that goes alone, so big mail never
    makes one huge parameter; every message still gets its own content."""
    monkeypatch.setattr(ops, "CONTENTS_PER_STATEMENT", 3000)
    sizes = [100, 2500, 400, 5000, 300, 200, 2900, 10]  # runs: [100, 2500] [400] [5000] [300, 200] [2900] [10]
    built = [build(f"r{n}@example.com", content=body(size)) for n, size in enumerate(sizes)]
    await asyncio.gather(*(store.submit(message, copies) for message, copies in built))
    for message, _copies in built:
        assert await store.content(message.id) == message.content
