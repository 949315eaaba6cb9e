"""Reports: an outcome the sender asked to hear about is owed once, paid once, never lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from msgspool.domain.dsn import Notify, RecipientDSN
from msgspool.domain.hooks import Preprocessed, Reject
from msgspool.domain.message import Message, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from tests.contract.conftest import build, statuses, submit

OK = Reply(250, "2.0.0", "ok")
BUSY = Reply(450, "4.2.1", "Mailbox busy")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user")


def report_for(message: Message, now: float) -> tuple[Message, list[Message]]:
    """A report as the reporter submits it: to the sender, from the null sender; the sender's
    mailbox is local here, so it comes with the copy filed there."""
    return build(message.sender, sender="", now=now, message_class="REPORT.IPM.Note.NDR")


async def owed(store: Store) -> dict[str, list[tuple[str, str]]]:
    return {p.message_id: [(r["address"], r["action"]) for r in p.recipients] for p in await store.pending_reports()}


async def test_a_failed_recipient_owes_one_report_and_writing_it_clears_the_debt(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", "c@example.com", now=now)
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.FAILED, NO_SUCH_USER),
                        Settlement(message.id, 1, "c@example.com", Status.DELIVERED, OK)], now)
    [pending] = await store.pending_reports()
    assert pending.message_id == message.id and pending.sender == "a@example.org"
    assert [(r["address"], r["action"], r["reply"].line()) for r in pending.recipients] == [
        ("b@example.com", "failed", "550 5.1.1 No such user")]
    assert pending.content.endswith(message.content)
    report, copies = report_for(message, now)
    events = await store.reported(message.id, [(0, "failed")], report, copies)
    assert await store.pending_reports() == []
    assert await store.get(report.id) is not None
    assert [m.message_class for m in await store.list_messages(("inbox",), "a@example.org", 10)] == [
        "REPORT.IPM.Note.NDR"]
    assert any(e.detail.get("report_id") == report.id for e in events)


async def test_no_report_is_owed_when_the_sender_asked_for_none(store: Store) -> None:
    now = time.time()
    never = RecipientDSN(frozenset())
    message = await submit(store, "b@example.com", "c@example.com", now=now, recipient_dsn=[never, None])
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.FAILED, NO_SUCH_USER, dsn=never),
                        Settlement(message.id, 1, "c@example.com", Status.DELIVERED, OK)], now)
    assert await store.pending_reports() == []


async def test_a_success_report_is_owed_only_when_asked_for(store: Store) -> None:
    now = time.time()
    success = RecipientDSN(frozenset({Notify.SUCCESS}))
    message = await submit(store, "b@example.com", now=now, recipient_dsn=[success])
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DELIVERED, OK, dsn=success)], now)
    assert await owed(store) == {message.id: [("b@example.com", "delivered")]}


async def test_an_unroutable_or_rejected_recipient_owes_its_report_at_once(store: Store) -> None:
    now = time.time()
    unroutable = await submit(store, "printer", now=now, addrtypes=["FAX"])
    assert await statuses(store, unroutable.id) == ["failed"]
    rejected = await submit(store, "b@example.com", now=now)
    [claimed] = await store.claim(now, 10, whole_messages=True)
    ready, _ = await store.preprocessed(claimed, Preprocessed([], Reject(Reply(550, "5.7.1", "spam"))), now)
    assert ready == []
    assert await statuses(store, rejected.id) == ["failed"]
    assert await owed(store) == {unroutable.id: [("printer", "failed")], rejected.id: [("b@example.com", "failed")]}


async def test_a_delay_notice_falls_due_once(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DEFERRED, BUSY, next_attempt_at=now + 3600,
                                   warn_at=now + 600)], now)
    assert await store.pending_reports() == []
    assert await store.next_delay_warning() == now + 600
    assert await store.mark_delay_warnings(now + 599) == 0
    assert await store.mark_delay_warnings(now + 600) == 1
    assert await store.next_delay_warning() is None
    assert await owed(store) == {message.id: [("b@example.com", "delayed")]}
    await store.reported(message.id, [(0, "delayed")], *report_for(message, now))
    assert await store.mark_delay_warnings(now + 7200) == 0
    await store.flush([message.id], now + 700)
    await store.claim(now + 700, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DEFERRED, BUSY, next_attempt_at=now + 3600,
                                   warn_at=now + 600)], now + 700)
    assert await store.pending_reports() == []  # one delay notice per recipient


async def test_a_debt_that_changed_while_its_report_was_written_stays_owed(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now)
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.DEFERRED, BUSY, next_attempt_at=now,
                                   warn_at=now)], now)
    assert await owed(store) == {message.id: [("b@example.com", "delayed")]}
    await store.claim(now, 10)  # meanwhile: tried again, and failed for good
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.FAILED, NO_SUCH_USER)], now)
    await store.reported(message.id, [(0, "delayed")], *report_for(message, now))  # the delay notice, as read
    assert await owed(store) == {message.id: [("b@example.com", "failed")]}


async def test_a_message_deleted_after_submit_waits_for_the_reports_it_owes(store: Store) -> None:
    now = time.time()
    message = await submit(store, "b@example.com", now=now, delete_after_submit=True)
    await store.claim(now, 10)
    await store.settle([Settlement(message.id, 0, "b@example.com", Status.FAILED, NO_SUCH_USER)], now)
    info = await store.get(message.id)
    assert info is not None and info.folder == "sent"  # the report quotes it
    await store.reported(message.id, [(0, "failed")], *report_for(message, now))
    assert await store.get(message.id) is None


async def test_two_nodes_that_read_the_same_debt_write_its_report_once(new_store: Callable[[], Store]) -> None:
    """Issue 11.5: the reporters of two nodes both find a debt and both write its report, at the
    same moment; the spool keeps one report, whichever came first."""
    first, second = new_store(), new_store()
    await first.open()
    await second.open()
    try:
        now = time.time()
        message = await submit(first, "b@example.com", now=now)
        await first.claim(now, 10)
        await first.settle([Settlement(message.id, 0, "b@example.com", Status.FAILED, NO_SUCH_USER)], now)
        [seen_by_first] = await first.pending_reports()
        [seen_by_second] = await second.pending_reports()
        assert seen_by_first.message_id == seen_by_second.message_id == message.id
        reports = [report_for(message, now) for _ in range(2)]
        events = await asyncio.gather(*(store.reported(message.id, [(0, "failed")], report, copies)
                                        for store, (report, copies) in zip((first, second), reports, strict=True)))
        written = [report.id for report, _ in reports if await first.get(report.id) is not None]
        assert len(written) == 1 and sum(bool(e) for e in events) == 1
        assert await first.pending_reports() == [] and await second.pending_reports() == []
        assert len(await first.list_messages(("inbox",), "a@example.org", 10)) == 1
    finally:
        await first.close()
        await second.close()
