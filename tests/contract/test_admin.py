"""Admin: the counts of the status table, and housekeeping that forgets only what is past keeping."""

from __future__ import annotations

import time

from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from tests.contract.conftest import RELAY, build, submit

OK = Reply(250, "2.0.0", "ok")


async def test_counts_are_of_outbox_recipients_by_status_and_of_outbox_messages(store: Store) -> None:
    now = time.time()
    assert await store.counts() == {**{str(s): 0 for s in Status}, "messages": 0}
    done = await submit(store, "b@example.com", now=now)
    await submit(store, "c@example.com", "d@example.com", now=now)
    held = await submit(store, "e@example.com", now=now)
    await store.hold([held.id], now)
    message, copies = build("bob@example.org", sender="x@example.com")  # filed: not in the outbox
    await store.submit(message, copies)
    [claimed] = [m for m in await store.claim(now, 10) if m.id == done.id]
    await store.settle([Settlement(done.id, 0, "b@example.com", Status.DELIVERED, OK)], now)
    counts = await store.counts()
    assert counts["messages"] == 2
    assert (counts["active"], counts["held"], counts["delivered"], counts["queued"]) == (2, 1, 0, 0)
    assert claimed.id == done.id


async def test_purge_drops_finished_mail_and_events_past_their_retention_only(store: Store) -> None:
    now = time.time()
    old = await submit(store, "b@example.com", now=now - 100)
    new = await submit(store, "c@example.com", now=now)
    waiting = await submit(store, "d@example.com", now=now - 100)
    filed, copies = build("bob@example.org", sender="x@example.com", now=now - 100)
    await store.submit(filed, copies)
    await store.claim(now, 10)
    await store.settle([Settlement(old.id, 0, "b@example.com", Status.DELIVERED, OK)], now - 50)
    await store.settle([Settlement(new.id, 0, "c@example.com", Status.DELIVERED, OK)], now)
    assert await store.purge(sent_before=now - 10, events_before=now - 10) == 2
    assert await store.get(old.id) is None and await store.get(filed.id) is None  # the outbox copy, filed at once
    for kept in (new.id, waiting.id, copies[0].id):
        assert await store.get(kept) is not None
    assert all(e.time >= now - 10 for e in await store.events_after(0))


async def test_commit_stats_count_what_was_committed(store: Store) -> None:
    await submit(store, "b@example.com")
    commits, writes = store.commit_stats
    assert 1 <= commits <= writes


async def test_destination_counts_are_of_pending_recipients_by_route_and_status(store: Store) -> None:
    now = time.time()
    assert await store.destination_counts() == []
    done = await submit(store, "b@example.com", now=now)
    await submit(store, "c@example.com", "https://hooks.test/in", addrtypes=["SMTP", "HTTP"], now=now)
    held = await submit(store, "e@example.com", now=now)
    await store.hold([held.id], now)
    await store.claim(now, 10)
    await store.settle([Settlement(done.id, 0, "b@example.com", Status.DELIVERED, OK)], now)
    await submit(store, "f@example.com", now=now)
    assert sorted(await store.destination_counts()) == [
        ("http", "hooks.test", "active", 1), ("smtp", RELAY, "active", 1), ("smtp", RELAY, "held", 1),
        ("smtp", RELAY, "queued", 1)]


async def test_commits_are_told_how_many_writes_they_carried(store: Store) -> None:
    sizes: list[int] = []
    store.on_commit = sizes.append
    await submit(store, "b@example.com")
    assert sizes and all(size >= 1 for size in sizes)
    store.on_commit = None
    await submit(store, "c@example.com")
    assert len(sizes) == 1
