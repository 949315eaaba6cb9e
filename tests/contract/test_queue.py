"""Queue: what intake commits is claimed once, settled once, and leaves the outbox when done."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from msgspool.domain.events import Event, EventType
from msgspool.domain.message import URGENT, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from msgspool.spooler.intake import mark_active
from tests.contract.conftest import build, ids, statuses, submit

OK = Reply(250, "2.0.0", "ok")
BUSY = Reply(450, "4.2.1", "Mailbox busy")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user")


def settled(message_id: str, index: int, address: str, status: Status, reply: Reply, **kw: object) -> Settlement:
    return Settlement(message_id, index, address, status, reply, **kw)  # type: ignore[arg-type]


async def test_a_submission_is_stored_with_its_recipients_queued_and_told_by_an_event(store: Store) -> None:
    message, copies = build("b@example.com", "c@example.net")
    events = await store.submit(message, copies)
    info = await store.get(message.id)
    assert info is not None
    assert (info.folder, info.sender, info.size) == ("outbox", "a@example.org", message.size)
    assert [(r["address"], r["status"], r["transport"], r["destination"]) for r in info.recipients] == [
        ("b@example.com", "queued", "smtp", "relay.test:25"), ("c@example.net", "queued", "smtp", "relay.test:25")]
    assert [e.type for e in events] == [EventType.SUBMITTED]
    assert events[0].id is not None and events[0].message_id == message.id
    assert await store.content(message.id) == message.content


async def test_due_recipients_are_claimed_once(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.net", now=now)
    claimed = await store.claim(now + 1, 10)
    assert ids(claimed) == [message.id]
    assert [(r.address, r.status) for r in claimed[0].recipients] == [
        ("b@example.com", Status.ACTIVE), ("c@example.net", Status.ACTIVE)]
    assert claimed[0].content == message.content and claimed[0].sender == message.sender
    assert await store.claim(now + 1, 10) == []
    assert await statuses(store, message.id) == ["active", "active"]


async def test_a_claim_takes_no_more_than_its_limit(store: Store) -> None:
    now = time.time()
    for i in range(5):
        await submit(store, f"r{i}@example.com", now=now)
    first = await store.claim(now + 1, 3)
    rest = await store.claim(now + 1, 10)
    assert sum(len(m.recipients) for m in first) == 3
    assert sum(len(m.recipients) for m in rest) == 2
    assert not set(ids(first)) & set(ids(rest))


async def test_mail_is_not_claimed_before_it_is_due_and_next_due_says_when(store: Store) -> None:
    now = time.time()
    later = await submit(store, "b@example.com", now=now, deliver_after=now + 3600)
    assert await store.claim(now + 1, 10) == []
    assert await store.next_due() == later.recipients[0].next_attempt_at == now + 3600
    assert ids(await store.claim(now + 3601, 10)) == [later.id]
    assert await store.next_due() is None


async def test_urgent_mail_is_claimed_before_a_backlog_of_normal_mail_due_earlier(store: Store) -> None:
    now = time.time()
    for i in range(3):
        await submit(store, f"n{i}@example.com", now=now - 60)
    urgent = await submit(store, "u@example.com", now=now, priority=URGENT)
    assert ids(await store.claim(now + 1, 1)) == [urgent.id]


async def test_delivered_to_every_recipient_the_message_moves_to_sent(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.net", now=now)
    await store.claim(now, 10)
    first = await store.settle([settled(message.id, 0, "b@example.com", Status.DELIVERED, OK)], now)
    assert (await store.get(message.id)).folder == "outbox"  # type: ignore[union-attr]
    second = await store.settle([settled(message.id, 1, "c@example.net", Status.DELIVERED, OK,
                                         remote="relay.test[192.0.2.1]")], now + 1)
    info = await store.get(message.id)
    assert info is not None and info.folder == "sent" and info.finished_at == now + 1
    assert [(e.type, e.recipient) for e in first + second] == [(EventType.DELIVERED, "b@example.com"),
                                                               (EventType.DELIVERED, "c@example.net")]
    assert info.recipients[1]["last_reply"] == "250 2.0.0 ok"
    assert info.recipients[1]["relay"] == "relay.test[192.0.2.1]"
    assert info.recipients[1]["attempts"] == 1


async def test_a_deferred_recipient_waits_for_its_next_attempt(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    await store.claim(now, 10)
    events = await store.settle([settled(message.id, 0, "b@example.com", Status.DEFERRED, BUSY,
                                         next_attempt_at=now + 300)], now)
    assert [e.type for e in events] == [EventType.DEFERRED]
    info = await store.get(message.id)
    assert info is not None
    r = info.recipients[0]
    assert (r["status"], r["attempts"], r["next_attempt_at"], r["last_reply"]) == (
        "deferred", 1, now + 300, "450 4.2.1 Mailbox busy")
    assert await store.claim(now + 299, 10) == []
    retried = await store.claim(now + 300, 10)
    assert ids(retried) == [message.id] and retried[0].recipients[0].attempts == 1


async def test_an_outcome_is_recorded_once_and_only_for_a_claimed_recipient(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    outcome = settled(message.id, 0, "b@example.com", Status.DELIVERED, OK)
    assert await store.settle([outcome], now) == []  # not claimed: nothing to record
    assert await statuses(store, message.id) == ["queued"]
    await store.claim(now, 10)
    assert len(await store.settle([outcome], now)) == 1
    late = settled(message.id, 0, "b@example.com", Status.FAILED, NO_SUCH_USER)
    assert await store.settle([late], now) == []
    assert await statuses(store, message.id) == ["delivered"]


async def test_a_message_submitted_with_delete_after_submit_is_gone_once_delivered(store: Store) -> None:
    now = time.time()
    kept = await submit(store, "b@example.com", now=now)
    gone = await submit(store, "c@example.com", now=now, delete_after_submit=True)
    await store.claim(now, 10)
    await store.settle([settled(kept.id, 0, "b@example.com", Status.DELIVERED, OK),
                        settled(gone.id, 0, "c@example.com", Status.DELIVERED, OK)], now)
    assert await store.get(gone.id) is None
    assert [(m.id, m.folder) for m in await store.list_messages(("sent", "outbox"), "", 10)] == [(kept.id, "sent")]


async def test_local_recipients_are_filed_at_submission_and_told_by_new_mail(store: Store) -> None:
    message, copies = build("Bob@example.org", "c@example.com")
    events = await store.submit(message, copies)
    assert await statuses(store, message.id) == ["delivered", "queued"]
    new_mail = [e for e in events if e.type is EventType.NEW_MAIL]
    assert [(e.mailbox, e.folder) for e in new_mail] == [("bob@example.org", "inbox")]
    filed = await store.list_messages(("inbox",), "bob@example.org", 10)
    assert ids(filed) == [copies[0].id] == [new_mail[0].message_id]
    content = await store.content(copies[0].id)
    assert content is not None
    assert content.startswith(b"Return-Path: <a@example.org>\r\nDelivered-To: Bob@example.org\r\n")
    assert content.endswith(message.content)


async def test_a_failing_write_fails_alone(store: Store) -> None:
    first = await submit(store, "b@example.com")
    duplicate, _ = build("c@example.com", message_id=first.id)
    others = [build(f"d{i}@example.com")[0] for i in range(5)]
    results = await asyncio.gather(store.submit(duplicate), *(store.submit(m) for m in others),
                                   return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert all(isinstance(r, list) for r in results[1:])
    for message in others:
        assert await statuses(store, message.id) == ["queued"]
    info = await store.get(first.id)
    assert info is not None and info.recipients[0]["address"] == "b@example.com"


async def test_a_hand_over_is_taken_back_only_while_its_run_still_owns_it(store: Store) -> None:
    """Issue 10.1: intake commits a hand-over as the delivery run's; when that run died before it
    got the message, intake takes it back — but never from the next run, which may have claimed it."""
    now = time.time()
    for node in ("run-1", "run-2"):
        await store.register_node(node, "host", 1, now, 60.0)
    message, _ = build("b@example.com", now=now)
    mark_active(message)
    await store.submit(message, owner="run-1")
    assert await statuses(store, message.id) == ["active"]
    assert await store.unclaim([(message.id, 0)], now, owner="run-2") == []
    assert await statuses(store, message.id) == ["active"]
    await store.unclaim([(message.id, 0)], now, owner="run-1")
    assert await statuses(store, message.id) == ["queued"]
    store.owner = "run-2"
    assert ids(await store.claim(now + 1, 10)) == [message.id]
    await store.unclaim([(message.id, 0)], now, owner="run-1")  # too late: run-2 has it
    assert await statuses(store, message.id) == ["active"]


async def test_recipients_given_back_unattempted_wait_again_held_if_their_message_is(store: Store) -> None:
    now = time.time()
    held = await submit(store, "b@example.com", now=now)
    free = await submit(store, "c@example.com", now=now)
    await store.claim(now, 10)
    await store.hold([held.id], now)
    events = await store.unclaim([(held.id, 0), (free.id, 0)], now)
    assert [(e.type, e.message_id) for e in events] == [(EventType.HELD, held.id)]
    assert await statuses(store, held.id) == ["held"]
    assert await statuses(store, free.id) == ["queued"]
    assert ids(await store.claim(now, 10)) == [free.id]


async def test_a_rescue_makes_every_recipient_claimed_by_no_live_node_due_again(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    await store.claim(now, 10)  # by no node at all (store.owner None)
    assert await store.rescue(now) == 2
    assert await statuses(store, message.id) == ["queued", "queued"]
    assert ids(await store.claim(now, 10)) == [message.id]


async def test_the_watchdog_returns_stuck_recipients_only_while_owned_as_seen(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    await store.register_node("run-1", "host", 1, now, 60.0)
    store.owner = "run-1"
    await store.claim(now, 10)
    seen = await store.active_recipients()
    assert sorted(seen) == [(message.id, 0, "run-1"), (message.id, 1, "run-1")]
    await store.settle([settled(message.id, 1, "c@example.com", Status.DELIVERED, OK)], now)
    await store.return_stuck(seen, now)
    assert await statuses(store, message.id) == ["queued", "delivered"]
    info = await store.get(message.id)
    assert info is not None and [h["stage"] for h in info.history or []] == ["watchdog"]


async def test_recipients_waiting_for_a_destination_are_released_when_it_is_up(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    await store.claim(now, 10)
    await store.settle([settled(message.id, 0, "b@example.com", Status.DEFERRED, BUSY, next_attempt_at=now + 3600,
                                wait_destination=True, transport="smtp", nexthop="relay.test:25")], now)
    assert await store.waiting_destinations() == [("smtp", "relay.test:25")]
    assert await store.release_destination("smtp", "elsewhere:25", now) == 0
    assert await store.release_destination("smtp", "relay.test:25", now) == 1
    assert await store.waiting_destinations() == []
    assert ids(await store.claim(now, 10)) == [message.id]


async def test_a_transport_put_offline_stays_so_for_every_store_on_the_spool_until_online(
        store: Store, new_store: Callable[[], Store]) -> None:
    """Issue 12.7: the flag is in the store, so every node (and the next start) honours it."""
    now = time.time()
    assert await store.offline_transports() == {}
    assert await store.set_transport_offline("smtp", True, now) is True
    assert await store.set_transport_offline("smtp", True, now + 5) is False  # already: since stays
    other = new_store()
    await other.open()
    try:
        assert await other.offline_transports() == {"smtp": now}
        assert await other.set_transport_offline("smtp", False, now + 6) is True
        assert await store.offline_transports() == {}
        assert await other.set_transport_offline("smtp", False, now + 7) is False
    finally:
        await other.close()


async def test_recipients_waiting_for_a_transport_are_released_when_it_is_online(store: Store) -> None:
    now = time.time()
    waiting = await submit(store, "b@example.com", now=now)
    busy = await submit(store, "c@example.com", now=now)
    await store.claim(now, 10)
    await store.settle([settled(waiting.id, 0, "b@example.com", Status.DEFERRED, BUSY, next_attempt_at=now + 3600,
                                wait_destination=True, transport="smtp", nexthop="relay.test:25"),
                        settled(busy.id, 0, "c@example.com", Status.DEFERRED, BUSY, next_attempt_at=now + 3600,
                                transport="smtp", nexthop="relay.test:25")], now)
    assert await store.release_transport("other", now) == 0
    assert await store.release_transport("smtp", now) == 1  # not the one deferred by its next hop's 450
    assert ids(await store.claim(now, 10)) == [waiting.id]


async def test_a_resend_names_its_original_and_the_original_lists_it(store: Store) -> None:
    """MAPI MSGFLAG_RESEND (`queue resend`): the link is stored both ways, and the content sent
    again is the one submitted."""
    now = time.time()
    original = await submit(store, "b@example.com", "c@example.com", now=now)
    assert await store.submitted_content(original.id) == (original.sender, original.content)
    assert await store.submitted_content("no-such-id") is None
    resend = await submit(store, "c@example.com", now=now + 1, resend_of=original.id)
    again = await submit(store, "c@example.com", now=now + 2, resend_of=original.id)
    info, resent = await store.get(original.id), await store.get(resend.id)
    assert info is not None and resent is not None
    assert (info.resend_of, info.resends) == (None, [resend.id, again.id])
    assert (resent.resend_of, resent.resends) == (original.id, [])
    assert resent.history is not None and info.history is not None
    assert [h["outcome"] for h in resent.history] == ["resend"] and original.id in resent.history[0]["detail"]
    assert [h["outcome"] for h in info.history] == ["resent", "resent"]
    [listed] = [m for m in await store.list_messages(("outbox",), "", 10) if m.id == resend.id]
    assert listed.resend_of == original.id


async def test_events_that_change_no_state_are_recorded_with_ids_in_order(store: Store) -> None:
    now = time.time()
    down = Event(EventType.TRANSPORT_STATUS, None, now, detail={"destination": "relay.test:25", "status": "down"})
    up = Event(EventType.TRANSPORT_STATUS, None, now + 1, detail={"destination": "relay.test:25", "status": "up"})
    recorded = await store.record_events([down, up])
    assert [e.id for e in recorded] == sorted(e.id for e in recorded if e.id is not None)
    stored = await store.events_after(0)
    assert [(e.id, e.detail["status"]) for e in stored] == [(recorded[0].id, "down"), (recorded[1].id, "up")]
