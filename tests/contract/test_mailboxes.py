"""Mailboxes: filing by message class, listing in order a page at a time, the read flag, and the
one read receipt (RFC 8098 §2.1) a message may be answered with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from msgspool.domain.events import EventType
from msgspool.domain.mdn import Disposition
from msgspool.domain.message import Message, ReadReceipt
from msgspool.ports import Store
from tests.contract.conftest import build, ids, submit


async def file(store: Store, mailbox: str = "bob@example.org", **kw: object) -> Message:
    """Mail from afar filed into a local mailbox at submission; returns the filed copy."""
    message, copies = build(mailbox, sender="x@example.com", **kw)  # type: ignore[arg-type]
    await store.submit(message, copies)
    return copies[0]


def mdn_for(filed: Message) -> Message:
    return build(filed.sender, sender="", message_class="REPORT.IPM.Note.IPNRN")[0]


async def test_inbound_mail_is_filed_by_the_longest_matching_message_class(store: Store) -> None:
    await store.set_receive_folder("bob@example.org", "IPM.Note.Alert", "alerts")
    await store.set_receive_folder("bob@example.org", "IPM.Note.Alert.Disk", "disks")
    disk = await file(store, message_class="IPM.Note.Alert.Disk.Full")
    alert = await file(store, message_class="IPM.Note.Alert")
    note = await file(store)
    other = await file(store, "carol@example.org", message_class="IPM.Note.Alert")
    assert ids(await store.list_messages(("disks",), "bob@example.org", 10)) == [disk.id]
    assert ids(await store.list_messages(("alerts",), "bob@example.org", 10)) == [alert.id]
    assert ids(await store.list_messages(("inbox",), "bob@example.org", 10)) == [note.id]
    assert ids(await store.list_messages(("inbox",), "carol@example.org", 10)) == [other.id]


async def test_a_receive_folder_set_again_replaces_the_old_one(store: Store) -> None:
    await store.set_receive_folder("bob@example.org", "IPM.Note", "old")
    await store.set_receive_folder("bob@example.org", "IPM.Note", "new")
    filed = await file(store)
    assert (await store.get(filed.id)).folder == "new"  # type: ignore[union-attr]


async def test_a_listing_is_in_submission_order_and_pages_without_gaps_or_repeats(store: Store) -> None:
    now = time.time()
    submitted = [await submit(store, f"r{i}@example.com", now=now + i // 2) for i in range(7)]  # equal times too
    pages, after = [], None
    while page := await store.list_messages(("outbox",), "", 3, after=after):
        pages.append(ids(page))
        after = (page[-1].submitted_at, page[-1].id)
    assert [len(p) for p in pages] == [3, 3, 1]
    listed = [i for p in pages for i in p]
    assert sorted(listed) == sorted(ids(submitted))
    times = {m.id: m.submitted_at for m in submitted}
    assert [(times[i], i) for i in listed] == sorted((times[i], i) for i in listed)


async def test_a_listing_shows_only_the_folders_and_mailbox_asked_for(store: Store) -> None:
    queued = await submit(store, "b@example.com")
    filed = await file(store)
    assert ids(await store.list_messages(("outbox",), "", 10)) == [queued.id]
    assert ids(await store.list_messages(("inbox",), None, 10)) == [filed.id]
    assert ids(await store.list_messages(("inbox",), "carol@example.org", 10)) == []
    assert set(ids(await store.list_messages(("outbox", "inbox"), None, 10))) == {queued.id, filed.id}


async def test_filed_mail_arrives_unread_and_the_flag_changes_once_per_change(store: Store) -> None:
    now = time.time()
    filed = await file(store)
    assert (await store.get(filed.id)).read is False  # type: ignore[union-attr]
    events = await store.set_read([filed.id], True, now)
    assert [(e.type, e.message_id, e.mailbox, e.detail) for e in events] == [
        (EventType.READ, filed.id, "bob@example.org", {"read": True})]
    assert await store.set_read([filed.id], True, now) == []
    assert (await store.get(filed.id)).read is True  # type: ignore[union-attr]
    assert len(await store.set_read([filed.id], False, now)) == 1


async def test_a_message_is_answered_with_one_read_receipt_only(store: Store) -> None:
    now = time.time()
    filed = await file(store)
    first = mdn_for(filed)
    events = await store.send_receipt(ReadReceipt(filed.id, Disposition.DISPLAYED, first), now)
    assert {EventType.SUBMITTED, EventType.REPORT, EventType.READ} <= {e.type for e in events}
    info = await store.get(filed.id)
    assert info is not None and (info.read, info.mdn) == (True, "displayed")
    assert await store.get(first.id) is not None
    second = mdn_for(filed)
    await store.send_receipt(ReadReceipt(filed.id, Disposition.DISPLAYED, second), now)
    assert await store.get(second.id) is None


async def test_a_refused_read_receipt_is_remembered_and_never_sent_later(store: Store) -> None:
    now = time.time()
    filed = await file(store)
    await store.send_receipt(ReadReceipt(filed.id, Disposition.DISPLAYED, None), now)
    info = await store.get(filed.id)
    assert info is not None and (info.read, info.mdn) == (True, "suppressed")
    late = mdn_for(filed)
    await store.send_receipt(ReadReceipt(filed.id, Disposition.DISPLAYED, late), now)
    assert await store.get(late.id) is None


async def test_a_message_deleted_unread_is_answered_deleted_but_not_once_it_was_read(store: Store) -> None:
    now = time.time()
    unread, read = await file(store), await file(store)
    await store.set_read([read.id], True, now)
    answered, unanswered = mdn_for(unread), mdn_for(read)
    await store.send_receipt(ReadReceipt(unread.id, Disposition.DELETED, answered), now)
    await store.send_receipt(ReadReceipt(read.id, Disposition.DELETED, unanswered), now)
    assert await store.get(unread.id) is None and await store.get(read.id) is None
    assert await store.get(answered.id) is not None
    assert await store.get(unanswered.id) is None


async def test_the_receive_folder_of_a_class_is_the_longest_prefix_set_and_inbox_without_one(store: Store) -> None:
    await store.set_receive_folder("bob@example.org", "IPM.Note.Alert", "alerts")
    assert await store.receive_folder("bob@example.org", "IPM.Note.Alert.Disk") == "alerts"
    assert await store.receive_folder("bob@example.org", "IPM.Note") == "inbox"
    assert await store.receive_folder("nobody@example.org", "IPM.Note.Alert") == "inbox"


async def test_the_folders_of_a_mailbox_are_those_holding_its_messages_and_none_for_an_unknown_one(
        store: Store) -> None:
    await store.set_receive_folder("bob@example.org", "IPM.Note.Alert", "alerts")
    assert await store.mailbox_folders("bob@example.org") == []
    await file(store)
    await file(store, message_class="IPM.Note.Alert")
    assert await store.mailbox_folders("bob@example.org") == ["alerts", "inbox"]
    assert await store.mailbox_folders("nobody@example.org") is None


async def test_an_auto_reply_key_is_answered_once_a_period_by_any_of_the_spools_stores(
        new_store: Callable[[], Store]) -> None:
    """A Sieve vacation's memory (RFC 5230 §4.2) is the spool's: two stores on it — two nodes, or
    two messages at once — asking together get one yes."""
    a, b = new_store(), new_store()
    await a.open()
    await b.open()
    try:
        key, now, day = ("you@localhost", "bob@example.com", "h1"), time.time(), 86400.0
        answers = await asyncio.gather(*(s.answer_once(key, now, day) for s in (a, b, a, b)))
        assert sorted(answers) == [False, False, False, True]
        assert await a.answer_once(key, now + day / 2, day) is False  # within the period
        assert await b.answer_once(("you@localhost", "bob@example.com", "h2"), now, day) is True  # another handle
        assert await a.answer_once(("you@localhost", "eve@example.com", "h1"), now, day) is True  # another sender
        assert await b.answer_once(key, now + day, day) is True  # the period is over
        assert await a.answer_once(key, now + day + 1, day) is False  # and it began again
    finally:
        await a.close()
        await b.close()


async def test_the_mailboxes_are_listed_by_address_a_page_at_a_time_each_with_its_folders(store: Store) -> None:
    assert await store.list_mailboxes(10) == []
    await store.set_receive_folder("dave@example.org", "IPM.Note.Alert", "alerts")
    for mailbox in ("carol@example.org", "bob@example.org", "erin@example.org", "ann@example.org"):
        await file(store, mailbox)
    await file(store, "bob@example.org", message_class="IPM.Note.Alert")
    await store.set_receive_folder("bob@example.org", "IPM.Note.Alert", "alerts")
    await file(store, "bob@example.org", message_class="IPM.Note.Alert")
    await submit(store, "x@example.com")  # the spool's own outbox is no mailbox
    pages, after = [], ""
    while page := await store.list_mailboxes(2, after=after):
        pages.append([(m.address, m.folders) for m in page])
        after = page[-1].address
    assert pages == [[("ann@example.org", ["inbox"]), ("bob@example.org", ["alerts", "inbox"])],
                     [("carol@example.org", ["inbox"]), ("dave@example.org", [])],
                     [("erin@example.org", ["inbox"])]]
    listed = await store.list_mailboxes(10, after="bob@example.org")
    assert [m.address for m in listed] == ["carol@example.org", "dave@example.org", "erin@example.org"]
    assert all(m.created_at > 0 for m in listed)
