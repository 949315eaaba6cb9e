"""Events: the log clients resume from by id, and the webhook cursor that queues each event's
deliveries once."""

from __future__ import annotations

import time

from msgspool.domain.events import Event, EventType
from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from tests.contract.conftest import build, submit


async def test_events_are_read_back_in_order_a_page_at_a_time(store: Store) -> None:
    for i in range(5):
        await submit(store, f"r{i}@example.com")
    every = await store.events_after(0)
    assert [e.type for e in every] == [EventType.SUBMITTED] * 5
    assert [e.id for e in every] == sorted({e.id for e in every if e.id is not None})
    first = await store.events_after(0, limit=2)
    rest = await store.events_after(first[-1].id or 0)
    assert [e.id for e in first + rest] == [e.id for e in every]
    assert await store.events_after(every[-1].id or 0) == []


async def test_the_webhook_cursor_starts_at_the_newest_event(store: Store) -> None:
    await submit(store, "b@example.com")
    newest = (await store.events_after(0))[-1].id
    assert await store.webhook_cursor() == newest
    await submit(store, "c@example.com")
    assert await store.webhook_cursor() == newest  # set once, the first time it is asked


async def test_webhook_deliveries_are_queued_with_the_cursor_once(store: Store) -> None:
    cursor = await store.webhook_cursor()
    [event] = await store.record_events([Event(EventType.TRANSPORT_STATUS, None, time.time(),
                                               detail={"status": "down"})])
    assert event.id is not None
    delivery, _ = build("https://hooks.test/x", addrtypes=["HTTP"], content=b"{}")
    queued = await store.enqueue_webhooks(cursor, event.id, [delivery])
    assert queued is not None and [e.message_id for e in queued] == [delivery.id]
    assert await store.get(delivery.id) is not None
    assert await store.webhook_cursor() == event.id
    again, _ = build("https://hooks.test/x", addrtypes=["HTTP"], content=b"{}")
    assert await store.enqueue_webhooks(cursor, event.id, [again]) is None  # another dispatcher was first
    assert await store.get(again.id) is None
    assert await store.webhook_cursor() == event.id


async def test_one_message_s_events_are_every_attempt_of_each_recipient_in_order(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.net", now=now)
    other = await submit(store, "d@example.com", now=now)
    await store.claim(now, 10)
    busy, ok = Reply(450, "4.2.1", "Mailbox busy"), Reply(250, "2.0.0", "ok")
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DEFERRED, busy, next_attempt_at=now),
                        Settlement(message.id, 1, "c@example.net", Status.DELIVERED, ok)], now)
    await store.claim(now + 1, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DELIVERED, ok)], now + 1)
    events = await store.message_events(message.id)
    assert [(e.type, e.recipient) for e in events] == [
        (EventType.SUBMITTED, None), (EventType.DEFERRED, "b@example.com"), (EventType.DELIVERED, "c@example.net"),
        (EventType.DELIVERED, "b@example.com")]
    assert events[1].detail["reply"] == "450 4.2.1 Mailbox busy"
    assert [e.id for e in events] == sorted(e.id or 0 for e in events)
    page = await store.message_events(message.id, after=events[1].id or 0, limit=1)
    assert [e.id for e in page] == [events[2].id]
    assert [e.message_id for e in await store.message_events(other.id)] == [other.id]
    assert await store.message_events("NOSUCHID") == []
