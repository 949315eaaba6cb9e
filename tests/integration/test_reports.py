"""Delivery reports (RFC 3464 in RFC 6522 multipart/report), end to end on a real spool: what the
sender asked for (RFC 3461 NOTIFY) decides what is reported, and where the report goes."""

from __future__ import annotations

import asyncio
import time
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import compat32
from typing import Any

from msgspool.domain.dsn import Notify, OriginalRecipient, RecipientDSN
from msgspool.spooler.intake import Submission
from msgspool.spooler.runtime import Spooler
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
