"""QueueControl: the operator's hold, release, flush, requeue and delete, as postsuper does them."""

from __future__ import annotations

import time

from msgspool.domain.hooks import Draft, DraftRecipient, Preprocessed
from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from tests.contract.conftest import ids, statuses, submit

BUSY = Reply(450, "4.2.1", "Mailbox busy")


async def test_held_mail_is_never_claimed_until_released(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    assert await store.hold([message.id, "no-such-id"], now) == [message.id]
    info = await store.get(message.id)
    assert info is not None and info.held and [r["status"] for r in info.recipients] == ["held", "held"]
    assert await store.claim(now + 1, 10) == []
    assert await store.release([message.id, "no-such-id"], now) == [message.id]
    info = await store.get(message.id)
    assert info is not None and not info.held
    assert await statuses(store, message.id) == ["queued", "queued"]
    assert ids(await store.claim(now + 1, 10)) == [message.id]


async def test_a_held_message_stays_held_through_a_temporary_failure(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    await store.claim(now, 10)
    await store.hold([message.id], now)  # in flight: the transport finishes its transaction
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DEFERRED, BUSY,
                                   next_attempt_at=now + 60)], now)
    assert await statuses(store, message.id) == ["held"]
    assert await store.claim(now + 61, 10) == []


async def test_flush_makes_deferred_recipients_due_now(store: Store) -> None:
    now = time.time()
    first = await submit(store, "b@example.com", now=now)
    second = await submit(store, "c@example.com", now=now)
    await store.claim(now, 10)
    await store.settle([Settlement(m.id, 0, m.recipients[0].address, Status.DEFERRED, BUSY, next_attempt_at=now + 3600)
                        for m in (first, second)], now)
    assert await store.flush([first.id], now + 1) == 1
    assert ids(await store.claim(now + 1, 10)) == [first.id]
    assert await store.flush(None, now + 2) == 1
    assert ids(await store.claim(now + 2, 10)) == [second.id]
    assert await store.flush(None, now + 3) == 0


async def test_flush_of_one_destination_or_transport_makes_only_its_recipients_due(store: Store) -> None:
    """`queue flush --destination HOST` / `--transport NAME` (Postfix `postqueue -s SITE`)."""
    now = time.time()
    routes = [("smtp", "a.test:25"), ("smtp", "b.test:25"), ("partner", "a.test:25")]
    messages = [await submit(store, f"r{n}@example.com", now=now) for n in range(len(routes))]
    await store.claim(now, 10)
    await store.settle([Settlement(m.id, 0, m.recipients[0].address, Status.DEFERRED, BUSY, next_attempt_at=now + 3600,
                                   transport=transport, nexthop=nexthop)
                        for m, (transport, nexthop) in zip(messages, routes, strict=True)], now)
    assert await store.flush(None, now + 1, nexthop="nowhere.test:25") == 0
    assert await store.flush(None, now + 1, transport="smtp", nexthop="b.test:25") == 1
    assert ids(await store.claim(now + 1, 10)) == [messages[1].id]
    assert await store.flush(None, now + 2, nexthop="a.test:25") == 2
    assert sorted(ids(await store.claim(now + 2, 10))) == sorted([messages[0].id, messages[2].id])
    assert await store.flush(None, now + 3, transport="smtp") == 0  # all due (claimed) already


async def test_requeue_sends_the_message_through_the_outbound_hooks_again_as_submitted(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    [claimed] = await store.claim(now, 10, whole_messages=True)
    assert not claimed.preprocessed
    rewritten = Draft(message.id, message.sender, [DraftRecipient("b@example.com", index=0)],
                      b"Subject: changed\r\n\r\n")
    ready, _ = await store.preprocessed(claimed, Preprocessed([rewritten]), now)
    assert [m.content for m in ready] == [rewritten.content]
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DEFERRED, BUSY,
                                   next_attempt_at=now + 3600)], now)
    assert await store.requeue([message.id, "no-such-id"], now + 1) == [message.id]
    [again] = await store.claim(now + 1, 10, whole_messages=True)
    assert not again.preprocessed and again.content == message.content
    info = await store.get(message.id)
    assert info is not None and "requeued" in [h["outcome"] for h in info.history or []]


async def test_delete_removes_messages_and_skips_unknown_ids(store: Store) -> None:
    now = time.time()
    gone = await submit(store, "b@example.com", now=now)
    kept = await submit(store, "c@example.com", now=now)
    assert await store.delete([gone.id, "no-such-id"]) == [gone.id]
    assert await store.get(gone.id) is None and await store.content(gone.id) is None
    assert ids(await store.claim(now, 10)) == [kept.id]


async def test_deleting_a_message_in_flight_cancels_only_its_waiting_recipients(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", "d@example.com", now=now)
    await store.claim(now, 1)  # b is in a transaction
    cancelled = await store.cancel_recipients({message.id: [0]}, now)
    assert cancelled == {message.id: ["c@example.com", "d@example.com"]}
    info = await store.get(message.id)
    assert info is not None and [(r["address"], r["status"]) for r in info.recipients] == [("b@example.com", "active")]
    assert await store.claim(now, 10) == []
