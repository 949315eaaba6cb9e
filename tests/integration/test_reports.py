"""Delivery reports (RFC 3464 in RFC 6522 multipart/report), end to end on a real spool: what the
sender asked for (RFC 3461 NOTIFY) decides what is reported, and where the report goes."""

from __future__ import annotations

import asyncio
import time
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest

from msgspool.domain.dsn import Notify, OriginalRecipient, RecipientDSN
from msgspool.domain.message import Message, Recipient, Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.spooler.intake import Submission
from msgspool.spooler.runtime import Spooler
from msgspool.stores.sqlite import SQLiteStore
from tests.conftest import SpoolerFactory
from tests.integration.test_relay import MESSAGE, wait_status
from tests.support.sink import Sink

SUCCESS = RecipientDSN(frozenset({Notify.SUCCESS, Notify.FAILURE}))
NEVER = RecipientDSN(frozenset())


def submission(sender: str, *recipients: str, dsn: list[RecipientDSN | None] | None = None) -> Submission:
    return Submission(sender=sender, recipients=list(recipients), content=MESSAGE, recipient_dsn=dsn)


async def inbox(spooler: Spooler, mailbox: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    end = time.monotonic() + timeout
    while True:
        found = await spooler.folder(mailbox)
        if len(found) >= count or time.monotonic() > end:
            return found
        await asyncio.sleep(0.02)


async def report_of(spooler: Spooler, entry: dict[str, Any]) -> EmailMessage:
    return message_from_bytes(await spooler.content(entry["id"]), policy=compat32)


def status_blocks(report: EmailMessage) -> list[EmailMessage]:
    """The per-recipient blocks of the message/delivery-status part (after the per-message one)."""
    part = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    return list(part.get_payload())[1:]  # type: ignore[arg-type]


async def test_a_failed_recipient_yields_an_ndr_in_the_local_senders_inbox(spooler_factory: SpoolerFactory,
                                                                           sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        orcpt = RecipientDSN(None, OriginalRecipient("rfc822", "Fail5xx@Example.com"))
        message_id = await spooler.submit(submission("a@example.org", "good@example.com", "fail5xx@example.com",
                                                     dsn=[None, orcpt]))
        await wait_status(spooler, message_id, {"delivered", "failed"})
        (entry,) = await inbox(spooler, "a@example.org", 1)
        report = await report_of(spooler, entry)
    assert entry["message_class"] == "REPORT.IPM.Note.NDR" and entry["sender"] == ""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    (block,) = status_blocks(report)  # only the failed recipient
    assert block["Final-Recipient"] == "rfc822; fail5xx@example.com"
    assert block["Original-Recipient"] == "rfc822; Fail5xx@Example.com"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user here"
    assert block["Last-Attempt-Date"]
    returned = next(p for p in report.walk() if p.get_content_type() == "message/rfc822")
    assert returned is not None  # RET default for a failure: the full message


async def test_notify_success_yields_a_relayed_report_from_a_next_hop_without_dsn(spooler_factory: SpoolerFactory,
                                                                                 sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        message_id = await spooler.submit(submission("a@example.org", "b@example.com", dsn=[SUCCESS]))
        await wait_status(spooler, message_id, {"delivered"})
        (entry,) = await inbox(spooler, "a@example.org", 1)
        (block,) = status_blocks(await report_of(spooler, entry))
    assert entry["message_class"] == "REPORT.IPM.Note.Relayed"
    assert (block["Action"], block["Status"]) == ("relayed", "2.0.0")


async def test_notify_success_for_local_delivery_yields_a_delivery_report(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(deliver=False) as submitter:  # routed later, by the delivering spooler
        await submitter.submit(submission("a@example.org", "bob@example.org", dsn=[SUCCESS]))
    async with spooler_factory(local_domains=["example.org"]) as spooler:
        (entry,) = await inbox(spooler, "a@example.org", 1)
        (block,) = status_blocks(await report_of(spooler, entry))
    assert entry["message_class"] == "REPORT.IPM.Note.DR"
    assert (block["Action"], block["Final-Recipient"]) == ("delivered", "rfc822; bob@example.org")


async def test_notify_success_for_mail_filed_at_submission_yields_a_delivery_report(
        spooler_factory: SpoolerFactory) -> None:
    # A delivering spooler routes at submission and files local copies in the same commit (the
    # tightly coupled path): no settlement follows, yet the DR is owed all the same.
    async with spooler_factory(local_domains=["example.org"]) as spooler:
        await spooler.submit(submission("a@example.org", "bob@example.org", dsn=[SUCCESS]))
        (entry,) = await inbox(spooler, "a@example.org", 1)
        (block,) = status_blocks(await report_of(spooler, entry))
    assert entry["message_class"] == "REPORT.IPM.Note.DR"
    assert (block["Action"], block["Final-Recipient"]) == ("delivered", "rfc822; bob@example.org")


async def test_recipients_that_fail_at_submission_yield_an_ndr(spooler_factory: SpoolerFactory) -> None:
    async with spooler_factory(local_domains=["example.org"], mailboxes=["a@example.org", "bob@example.org"]) as sp:
        unknown = await sp.submit(submission("a@example.org", "nobody@example.org", "bob@example.org"))
        unroutable = await sp.submit(Submission(sender="a@example.org", recipients=["+1 555 0100"],
                                                addrtypes=["FAX"], content=MESSAGE))
        reports = await inbox(sp, "a@example.org", 2)
        blocks = {block["Final-Recipient"]: block for entry in reports
                  for block in status_blocks(await report_of(sp, entry))}
        statuses = {r["address"]: r["status"] for i in (unknown, unroutable)
                    for r in (await sp.message(i))["recipients"]}
    assert {e["message_class"] for e in reports} == {"REPORT.IPM.Note.NDR"}
    assert statuses == {"nobody@example.org": "failed", "bob@example.org": "delivered", "+1 555 0100": "failed"}
    assert blocks["rfc822; nobody@example.org"]["Status"] == "5.1.1"
    assert blocks["rfc822; nobody@example.org"]["Action"] == "failed"
    assert len(blocks) == 2 and any("555 0100" in name for name in blocks)  # bob's delivery is not reported


async def test_notify_never_and_plain_success_yield_no_report(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        quiet = await spooler.submit(submission("a@example.org", "fail5xx@example.com", dsn=[NEVER]))
        plain = await spooler.submit(submission("a@example.org", "b@example.com"))
        await wait_status(spooler, quiet, {"failed"})
        await wait_status(spooler, plain, {"delivered"})
        await asyncio.sleep(0.3)
        assert await spooler.folder("a@example.org") == []


async def test_a_bounce_is_never_bounced(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        dropped = await spooler.submit(submission("", "fail5xx@example.com"))
        await wait_status(spooler, dropped, {"failed"})
        await asyncio.sleep(0.3)
        assert len(sink.messages) == 0  # no postmaster configured: dropped with a log line
    async with spooler_factory(relay=sink.address, local_domains=["example.org"],
                               postmaster="postmaster@example.org") as spooler:
        double = await spooler.submit(submission("", "fail5xx@example.com"))
        await wait_status(spooler, double, {"failed"})
        (entry,) = await inbox(spooler, "postmaster@example.org", 1)
        assert entry["message_class"] == "REPORT.IPM.Note.NDR"
        await asyncio.sleep(0.3)
        assert len(await spooler.folder("postmaster@example.org")) == 1  # once, not looped


async def test_delete_after_submit_waits_for_the_report_it_owes(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        sub = submission("a@example.org", "fail5xx@example.com")
        sub.delete_after_submit = True
        message_id = await spooler.submit(sub)
        (entry,) = await inbox(spooler, "a@example.org", 1)
        report = await report_of(spooler, entry)
        for _ in range(100):
            if await spooler.store.get(message_id) is None:
                break
            await asyncio.sleep(0.02)
        gone = await spooler.store.get(message_id) is None
    assert status_blocks(report)[0]["Action"] == "failed"
    assert gone  # deleted once the report was written


# -- delay notices (Postfix delay_warning_time) ------------------------------------------------------

FAILURE_ONLY = RecipientDSN(frozenset({Notify.FAILURE}))


async def no_more_reports(spooler: Spooler, mailbox: str, count: int, wait: float = 1.5) -> list[dict[str, Any]]:
    """The mailbox after `wait` seconds, for tests that prove nothing more arrives."""
    await asyncio.sleep(wait)
    found = await spooler.folder(mailbox)
    assert len(found) == count, [m["message_class"] for m in found]
    return found


async def retry_now(spooler: Spooler, message_id: str, attempts: int) -> None:
    """`queue flush` the message and wait until its recipients have made `attempts` attempts
    (the default backoff of the test settings is a minute)."""
    await spooler.flush([message_id])
    for _ in range(250):
        if all(r["attempts"] >= attempts for r in (await spooler.message(message_id))["recipients"]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{message_id} never made {attempts} attempts")


async def test_delay_notice_after_the_configured_time_then_the_ndr(spooler_factory: SpoolerFactory,
                                                                   sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"], delay_warning_time=1,
                               max_lifetime=5) as spooler:  # room for a loaded machine between the two
        message_id = await spooler.submit(submission("a@example.org", "fail4xx@example.com"))
        (notice,) = await inbox(spooler, "a@example.org", 1, timeout=4.0)
        report = await report_of(spooler, notice)
        await retry_now(spooler, message_id, 2)  # deferred again after the notice: no second one
        await wait_status(spooler, message_id, {"expired"})  # its last retry is due at max_lifetime
        delayed, ndr = await no_more_reports(spooler, "a@example.org", 2, wait=0.3)
        ndr_block = status_blocks(await report_of(spooler, ndr))[0]
    assert delayed["id"] == notice["id"]
    assert notice["message_class"] == "REPORT.IPM.Note.Delayed" and notice["sender"] == ""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Subject"] == "Delayed Mail (still being retried)"
    (block,) = status_blocks(report)
    assert block["Final-Recipient"] == "rfc822; fail4xx@example.com"
    assert (block["Action"], block["Status"]) == ("delayed", "4.2.1")
    assert block["Diagnostic-Code"] == "smtp; 450 4.2.1 Mailbox busy, try later"
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Last-Attempt-Date"] and block["Will-Retry-Until"]
    returned = [p.get_content_type() for p in report.walk()][-1]
    assert returned == "text/rfc822-headers"  # no RET=FULL: headers only
    assert ndr["message_class"] == "REPORT.IPM.Note.NDR" and ndr_block["Action"] == "failed"


async def test_no_delay_notice_for_notify_never_or_failure_nor_for_a_bounce(spooler_factory: SpoolerFactory,
                                                                            sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"], delay_warning_time=1,
                               postmaster="postmaster@example.org") as spooler:
        ids = [await spooler.submit(submission("a@example.org", "fail4xx-a@example.com", dsn=[NEVER])),
               await spooler.submit(submission("a@example.org", "fail4xx-b@example.com", dsn=[FAILURE_ONLY])),
               await spooler.submit(submission("", "fail4xx-c@example.com"))]
        await asyncio.sleep(1.2)
        for message_id in ids:  # deferred again past the threshold
            await retry_now(spooler, message_id, 2)
        await no_more_reports(spooler, "a@example.org", 0, wait=0.5)
        await no_more_reports(spooler, "postmaster@example.org", 0, wait=0)


async def test_no_delay_notice_when_delay_warning_time_is_zero(spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        assert spooler.settings.delay_warning_time == 0  # off by default, as in Postfix
        message_id = await spooler.submit(submission("a@example.org", "fail4xx@example.com"))
        await asyncio.sleep(1.2)
        await retry_now(spooler, message_id, 2)
        await no_more_reports(spooler, "a@example.org", 0, wait=0.5)


async def test_a_backlog_waiting_for_a_down_destination_gets_its_delay_notice(spooler_factory: SpoolerFactory) -> None:
    down = Sink()  # not started: nothing listens on its port yet
    async with spooler_factory(relay=down.address, local_domains=["example.org"], delay_warning_time=1) as spooler:
        message_id = await spooler.submit(submission("a@example.org", "b@example.com", "c@example.com"))
        (notice,) = await inbox(spooler, "a@example.org", 1, timeout=4.0)
        waiting = (await spooler.message(message_id))["recipients"]
        blocks = status_blocks(await report_of(spooler, notice))
        down.start()  # the destination comes back: the backlog goes, and no further report follows
        try:
            await wait_status(spooler, message_id, {"delivered"})
            await no_more_reports(spooler, "a@example.org", 1, wait=0.5)
        finally:
            down.stop()
    assert [r["attempts"] for r in waiting] == [1, 1]  # no new attempt: the delay timer found them
    assert notice["message_class"] == "REPORT.IPM.Note.Delayed"
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; b@example.com", "rfc822; c@example.com"]
    assert all(b["Action"] == "delayed" and b["Status"].startswith("4.") and b["Will-Retry-Until"] for b in blocks)


async def test_a_failure_and_a_delay_settled_together_make_an_ndr_and_a_separate_delay_notice(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(deliver=False) as submitter:  # written now, attempted after the threshold
        await submitter.submit(submission("a@example.org", "fail5xx@example.com", "fail4xx@example.com"))
    await asyncio.sleep(1.1)
    async with spooler_factory(relay=sink.address, local_domains=["example.org"], delay_warning_time=1) as spooler:
        found = await inbox(spooler, "a@example.org", 2)
        blocks = {m["message_class"]: status_blocks(await report_of(spooler, m)) for m in found}
    assert sorted(blocks) == ["REPORT.IPM.Note.Delayed", "REPORT.IPM.Note.NDR"]
    assert [(b["Final-Recipient"], b["Action"]) for b in blocks["REPORT.IPM.Note.NDR"]] == [
        ("rfc822; fail5xx@example.com", "failed")]
    assert [(b["Final-Recipient"], b["Action"]) for b in blocks["REPORT.IPM.Note.Delayed"]] == [
        ("rfc822; fail4xx@example.com", "delayed")]


# -- the store's side: one notice per recipient, recorded with the outcome -----------------------------


async def stored_recipient(tmp_path: Path, *, sender: str = "a@example.org") -> SQLiteStore:
    store = SQLiteStore(tmp_path / "store.db")
    await store.open()
    recipient = Recipient("x@example.com", status=Status.ACTIVE, transport="smtp", nexthop="relay")
    await store.submit(Message("m1", sender, MESSAGE, [recipient], submitted_at=1000.0))
    return store


def deferral(warn_at: float | None, status: Status = Status.DEFERRED) -> Settlement:
    return Settlement("m1", 0, "x@example.com", status, Reply(450, "4.2.1", "busy"), next_attempt_at=1001.0,
                      warn_at=warn_at)


async def owed(store: SQLiteStore) -> list[str]:
    return [r["action"] for item in await store.pending_reports() for r in item.recipients]


async def test_a_deferral_past_its_warn_time_owes_one_notice_and_never_another(tmp_path: Path) -> None:
    store = await stored_recipient(tmp_path)
    try:
        await store.settle([deferral(warn_at=1001.0)], now=1001.5)  # due: owed in the same step
        assert await owed(store) == ["delayed"]
        await store.reported("m1", [(0, "delayed")], None)
        await store.claim(now=2000.0, limit=10)
        await store.settle([deferral(warn_at=1001.0)], now=2000.0)  # deferred again: warned already
        assert await owed(store) == []
        assert await store.next_delay_warning() is None
    finally:
        await store.close()


async def test_the_delay_timer_marks_waiting_recipients_by_their_warn_time(tmp_path: Path) -> None:
    store = await stored_recipient(tmp_path)
    try:
        await store.settle([deferral(warn_at=1010.0)], now=1000.5)  # not due yet: kept for the timer
        assert await owed(store) == [] and await store.next_delay_warning() == 1010.0
        assert await store.mark_delay_warnings(1009.9) == 0
        assert await store.mark_delay_warnings(1010.0) == 1
        assert await store.mark_delay_warnings(1020.0) == 0  # once
        assert await owed(store) == ["delayed"] and await store.next_delay_warning() is None
    finally:
        await store.close()


async def test_a_notice_not_yet_written_yields_to_the_final_outcome(tmp_path: Path) -> None:
    store = await stored_recipient(tmp_path)
    try:
        await store.settle([deferral(warn_at=1001.0)], now=1002.0)
        (item,) = await store.pending_reports()  # the reporter has read the delay notice...
        await store.claim(now=2000.0, limit=10)
        await store.settle([deferral(None, Status.FAILED)], now=2000.0)  # ...when the recipient fails
        await store.reported("m1", [(0, "delayed")], None)
        assert [r["action"] for r in item.recipients] == ["delayed"]
        assert await owed(store) == ["failed"]  # the NDR is still owed; the stale notice is gone
    finally:
        await store.close()


async def test_a_notice_not_yet_written_is_void_once_delivered(tmp_path: Path) -> None:
    store = await stored_recipient(tmp_path)
    try:
        await store.settle([deferral(warn_at=1001.0)], now=1002.0)
        await store.claim(now=2000.0, limit=10)
        await store.settle([deferral(None, Status.DELIVERED)], now=2000.0)
        assert await owed(store) == []  # "still being retried" would be untrue now
    finally:
        await store.close()


async def test_a_report_that_cannot_be_written_does_not_hold_up_the_others(spooler_factory: SpoolerFactory,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from msgspool.spooler import reporter

    real = reporter.compose_report

    def compose(report: Any, now: float) -> bytes:  # a bug of ours that strikes one message
        if report.recipients[0].final_recipient == "nobody@example.org":
            raise ValueError("simulated bug")
        return real(report, now=now)

    monkeypatch.setattr(reporter, "compose_report", compose)
    async with spooler_factory(deliver=False) as submitter:  # both owe their NDR to the same run
        broken = await submitter.submit(submission("a@example.org", "nobody@example.org"))
        fine = await submitter.submit(submission("a@example.org", "other@example.org"))
    async with spooler_factory(local_domains=["example.org"], mailboxes=["a@example.org"]) as spooler:
        (entry,) = await inbox(spooler, "a@example.org", 1)
        (block,) = status_blocks(await report_of(spooler, entry))
        assert block["Final-Recipient"] == "rfc822; other@example.org"
        # The broken one is dropped, not retried forever (either may be written first: seen on PostgreSQL).
        for _ in range(250):
            if not await spooler.store.pending_reports():
                break
            await asyncio.sleep(0.02)
        assert await spooler.store.pending_reports() == []
    assert broken != fine


async def test_mail_waiting_for_an_offline_transport_gets_its_delay_notice_then_expires(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    """Issue 12.7, as Postfix's defer_transports: waiting for an offline transport is a deferral
    like any other — no attempt is counted, but the delay notice and the lifetime run on."""
    async with spooler_factory(relay=sink.address, local_domains=["example.org"], delay_warning_time=1,
                               max_lifetime=4) as spooler:
        await spooler.set_offline("smtp")
        message_id = await spooler.submit(submission("a@example.org", "b@example.com"))
        (notice,) = await inbox(spooler, "a@example.org", 1, timeout=4.0)
        [r] = (await spooler.message(message_id))["recipients"]
        (block,) = status_blocks(await report_of(spooler, notice))
        await wait_status(spooler, message_id, {"expired"}, timeout=8.0)
        delayed, ndr = await no_more_reports(spooler, "a@example.org", 2, wait=0.3)
    assert (r["status"], r["attempts"], r["last_reply"]) == ("deferred", 0, "421 4.3.2 transport smtp is offline")
    assert notice["message_class"] == "REPORT.IPM.Note.Delayed" and delayed["id"] == notice["id"]
    assert (block["Action"], block["Status"]) == ("delayed", "4.3.2")
    assert ndr["message_class"] == "REPORT.IPM.Note.NDR"
    assert sink.connections == 0 and sink.count() == 0
