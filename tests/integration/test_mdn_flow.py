"""Read receipts (RFC 8098 MDNs, MAPI IPNRN / IPNNRN) end to end on a real spool: mail comes in
over a real SMTP session, is filed into a local mailbox, is marked read or deleted through the
HTTP API on a real socket, and the MDN shows up in the requester's inbox or at the relay sink."""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message as EmailMessage
from email.policy import compat32
from typing import Any

import aiohttp
import pytest

from msgspool.daemon import start_smtp
from msgspool.domain.events import Event, EventType
from msgspool.spooler.runtime import Spooler
from msgspool.web.app import start as start_http
from tests.conftest import SpoolerFactory
from tests.support.sink import Sink, free_port

READ = "manual-action/MDN-sent-manually; displayed"
DELETED = "automatic-action/MDN-sent-automatically; deleted"


@dataclass
class Mail:
    """An in-process spooler with its SMTP listener and HTTP API on loopback."""

    spooler: Spooler
    smtp_port: int
    api: str
    http: aiohttp.ClientSession

    async def receive(self, sender: str, rcpt: str, *, subject: str = "hello", notify_to: str | None = None,
                      extra: str = "", rcpt_options: Sequence[str] = ()) -> str:
        """Send one message over SMTP and return the id of its copy in `rcpt`'s inbox."""
        before = {m["id"] for m in await self.spooler.folder(rcpt)}
        headers = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n"
        if notify_to is not None:
            headers += f"Disposition-Notification-To: {notify_to}\r\n"
        content = f"{headers}{extra}\r\nThe body.\r\n".encode()
        await asyncio.to_thread(_smtp_send, self.smtp_port, sender, rcpt, content, rcpt_options)
        (new,) = [m for m in await self.spooler.folder(rcpt) if m["id"] not in before]
        return str(new["id"])

    async def post(self, message_id: str, action: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        # Declared JSON even without a body: the API refuses any other state-changing request (415).
        data = None if body is None else json.dumps(body)
        async with self.http.post(f"{self.api}/queue/{message_id}/{action}", data=data,
                                  headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.json(content_type=None)

    async def show(self, message_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.api}/queue/{message_id}") as response:
            assert response.status == 200
            shown: dict[str, Any] = await response.json()
            return shown

    async def inbox(self, mailbox: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while True:
            found = await self.spooler.folder(mailbox)
            if len(found) >= count or time.monotonic() > end:
                return found
            await asyncio.sleep(0.02)

    async def parsed(self, message_id: str) -> EmailMessage:
        return message_from_bytes(await self.spooler.content(message_id), policy=compat32)


def _smtp_send(port: int, sender: str, rcpt: str, content: bytes, rcpt_options: Sequence[str] = ()) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo("client.example")
        client.sendmail(sender, [rcpt], content, rcpt_options=list(rcpt_options))


@pytest.fixture
async def mail(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[Mail]:
    smtp_port, http_port = free_port(), free_port()
    async with spooler_factory(relay=sink.address, local_domains=["example.org"],
                               smtp_listen=f"127.0.0.1:{smtp_port}") as spooler:
        smtp = await start_smtp(spooler, spooler.settings)
        runner = await start_http(spooler, "127.0.0.1", http_port)
        try:
            async with aiohttp.ClientSession() as http:
                yield Mail(spooler, smtp_port, f"http://127.0.0.1:{http_port}/api", http)
        finally:
            await runner.cleanup()
            smtp.close()


def notification(report: EmailMessage) -> EmailMessage:
    """The message/disposition-notification fields (the email package reads them as a header block)."""
    part = next(p for p in report.walk() if p.get_content_type() == "message/disposition-notification")
    (fields,) = part.get_payload()  # type: ignore[misc]
    assert isinstance(fields, EmailMessage)
    return fields


async def test_marking_read_sends_one_read_receipt_to_the_local_requester(mail: Mail) -> None:
    events: list[Event] = []
    mail.spooler.on(events.append, types=[EventType.READ, EventType.REPORT])
    original = await mail.receive("ann@example.org", "bob@example.org", subject="m1", notify_to="ann@example.org",
                                  extra="Original-Recipient: rfc822; Bob@Example.org\r\n")
    assert (await mail.show(original))["read"] is False

    status, answer = await mail.post(original, "read")
    (entry,) = await mail.inbox("ann@example.org", 1)
    report = await mail.parsed(entry["id"])
    fields = notification(report)
    assert status == 200 and answer["ok"] and answer["mdn"] and answer["read"] is True
    assert entry["message_class"] == "REPORT.IPM.Note.IPNRN" and entry["sender"] == ""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "disposition-notification"
    assert report["To"] == "<ann@example.org>" and report["Subject"] == "Read: m1"
    assert fields["Disposition"] == READ
    assert fields["Final-Recipient"] == "rfc822; bob@example.org"
    assert fields["Original-Recipient"] == "rfc822; Bob@Example.org"
    assert fields["Original-Message-ID"] == "<m1@example.org>"
    shown = await mail.show(original)
    assert (shown["read"], shown["mdn"]) == (True, "displayed")
    assert {e.type for e in events} == {EventType.READ, EventType.REPORT}
    assert next(e for e in events if e.type is EventType.READ).mailbox == "bob@example.org"

    again = [await mail.post(original, action) for action in ("read", "unread", "read")]
    assert [body["mdn"] for _status, body in again] == [[], [], []]
    assert (await mail.show(original))["read"] is True
    await asyncio.sleep(0.2)
    assert len(await mail.spooler.folder("ann@example.org")) == 1  # one MDN per message, ever


async def test_the_delivered_copy_carries_the_orcpt_as_original_recipient_and_the_mdn_names_it(mail: Mail) -> None:
    # RFC 8098 §2.3: the MTA performing final delivery adds Original-Recipient from the ORCPT.
    original = await mail.receive("ann@example.org", "bob@example.org", subject="m9", notify_to="ann@example.org",
                                  rcpt_options=["ORCPT=rfc822;Bob+2Bnews@Example.org"])
    copy = await mail.parsed(original)
    await mail.post(original, "read")
    (entry,) = await mail.inbox("ann@example.org", 1)
    fields = notification(await mail.parsed(entry["id"]))
    assert copy["Original-Recipient"] == "rfc822; Bob+news@Example.org"
    assert fields["Original-Recipient"] == "rfc822; Bob+news@Example.org"
    assert fields["Final-Recipient"] == "rfc822; bob@example.org"


async def test_deleting_unread_sends_deleted_and_deleting_after_read_sends_nothing_more(mail: Mail) -> None:
    unread = await mail.receive("ann@example.org", "bob@example.org", subject="u1", notify_to="ann@example.org")
    read = await mail.receive("ann@example.org", "bob@example.org", subject="r1", notify_to="ann@example.org")

    status, answer = await mail.post(unread, "delete")
    (nonread,) = await mail.inbox("ann@example.org", 1)
    assert (status, answer["delete"]) == (200, [unread])
    assert nonread["message_class"] == "REPORT.IPM.Note.IPNNRN"
    report = await mail.parsed(nonread["id"])
    assert notification(report)["Disposition"] == DELETED
    assert report["Subject"] == "Not read: u1" and report["Auto-Submitted"] == "auto-replied"
    assert (await mail.http.get(f"{mail.api}/queue/{unread}")).status == 404

    await mail.post(read, "read")
    await mail.inbox("ann@example.org", 2)
    await mail.post(read, "delete")
    await asyncio.sleep(0.2)
    classes = sorted(m["message_class"] for m in await mail.spooler.folder("ann@example.org"))
    assert classes == ["REPORT.IPM.Note.IPNNRN", "REPORT.IPM.Note.IPNRN"]


async def test_a_requester_other_than_the_return_path_gets_an_mdn_only_with_consent(mail: Mail) -> None:
    asked = await mail.receive("ann@example.org", "bob@example.org", subject="c1", notify_to="boss@example.org")
    refused = await mail.receive("ann@example.org", "bob@example.org", subject="c2", notify_to="boss@example.org")

    _status, silent = await mail.post(asked, "read")
    await asyncio.sleep(0.2)
    assert silent["mdn"] == [] and await mail.spooler.folder("boss@example.org") == []
    assert (await mail.show(asked))["mdn"] is None  # not asked yet: the user may still agree

    _status, agreed = await mail.post(asked, "read", {"mdn": True})
    (entry,) = await mail.inbox("boss@example.org", 1)
    assert len(agreed["mdn"]) == 1
    assert notification(await mail.parsed(entry["id"]))["Disposition"] == READ

    _status, declined = await mail.post(refused, "read", {"mdn": False})
    _status, later = await mail.post(refused, "read", {"mdn": True})
    assert declined["mdn"] == later["mdn"] == []
    assert (await mail.show(refused))["mdn"] == "suppressed"
    await asyncio.sleep(0.2)
    assert len(await mail.spooler.folder("boss@example.org")) == 1


async def test_a_remote_requester_gets_the_mdn_queued_with_the_null_sender(mail: Mail, sink: Sink) -> None:
    original = await mail.receive("carol@example.com", "bob@example.org", subject="x1",
                                  notify_to="carol@example.com")
    _status, answer = await mail.post(original, "read")
    await sink.async_wait_for(1)
    (mdn_id,) = answer["mdn"]
    received = sink.messages[0]
    queued = await mail.show(mdn_id)
    assert (received.sender, received.recipients) == ("", ["carol@example.com"])
    assert b"report-type=disposition-notification" in received.content
    assert b"Final-Recipient: rfc822; bob@example.org" in received.content
    assert queued["message_class"] == "REPORT.IPM.Note.IPNRN" and queued["sender"] == ""


async def test_an_unknown_id_is_a_404_and_a_message_without_a_request_only_changes_its_read_state(
        mail: Mail) -> None:
    status, problem = await mail.post("NOSUCH", "read")
    assert (status, problem["status"]) == (404, 404) and "NOSUCH" in problem["detail"]
    plain = await mail.receive("ann@example.org", "bob@example.org", subject="p1")

    _status, read = await mail.post(plain, "read")
    assert read["mdn"] == [] and (await mail.show(plain))["read"] is True
    _status, unread = await mail.post(plain, "unread")
    assert unread["read"] is False and (await mail.show(plain))["read"] is False
    bad = await mail.http.post(f"{mail.api}/queue/{plain}/read", data=b"{not json",
                               headers={"Content-Type": "application/json"})
    wrong = await mail.post(plain, "read", {"mdn": "yes"})
    assert bad.status == 400 and wrong[0] == 400
    await asyncio.sleep(0.2)
    assert await mail.spooler.folder("ann@example.org") == []


async def test_submitted_mail_starts_read_and_is_never_answered(mail: Mail, sink: Sink) -> None:
    content = b"From: bob@example.org\r\nSubject: s\r\nDisposition-Notification-To: bob@example.org\r\n\r\nhi\r\n"
    sent = await mail.spooler.send(content, sender="bob@example.org", recipients=["x@example.com"],
                                   mailbox="bob@example.org")
    await sink.async_wait_for(1)
    await mail.spooler.mark_unread([sent])
    assert await mail.spooler.mark_read([sent]) == []
    assert (await mail.spooler.delete([sent])) == [sent]
    await asyncio.sleep(0.2)
    assert len(sink.messages) == 1 and await mail.spooler.folder("bob@example.org") == []


async def test_concurrent_requests_to_mark_read_send_one_mdn(mail: Mail) -> None:
    original = await mail.receive("ann@example.org", "bob@example.org", subject="k1", notify_to="ann@example.org")
    results = await asyncio.gather(*(mail.spooler.mark_read([original]) for _ in range(4)))
    await asyncio.sleep(0.2)
    assert sorted(len(sent) for sent in results) == [0, 0, 0, 1]
    assert len(await mail.spooler.folder("ann@example.org")) == 1


async def test_the_python_api_sends_with_consent(mail: Mail) -> None:
    asked = await mail.receive("ann@example.org", "bob@example.org", subject="a1", notify_to="boss@example.org")
    assert await mail.spooler.mark_read([asked]) == []
    await mail.spooler.mark_unread([asked])
    (mdn_id,) = await mail.spooler.mark_read([asked], mdn=True)
    (entry,) = await mail.inbox("boss@example.org", 1)
    assert (await mail.spooler.message(mdn_id))["message_class"] == entry["message_class"] == "REPORT.IPM.Note.IPNRN"


async def test_a_report_that_asks_for_an_mdn_is_never_answered(mail: Mail) -> None:
    report = await mail.receive("ann@example.org", "bob@example.org", subject="d1", notify_to="ann@example.org",
                                extra="Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n")
    assert await mail.spooler.mark_read([report], mdn=True) == []
    await mail.spooler.mark_unread([report])
    assert await mail.spooler.delete([report], mdn=True) == [report]
    await asyncio.sleep(0.2)
    assert await mail.spooler.folder("ann@example.org") == []


async def test_the_store_takes_a_second_receipt_for_the_same_message_as_already_answered(mail: Mail) -> None:
    """Both receipts were composed while the message was unanswered; the store's check in the
    transaction that submits the MDN is what keeps it to one."""
    from msgspool.domain.mdn import Disposition

    original = await mail.receive("ann@example.org", "bob@example.org", subject="g1", notify_to="ann@example.org")
    first, second = [await mail.spooler.receipts.receipt(original, Disposition.DISPLAYED, None) for _ in range(2)]
    assert first is not None and second is not None
    taken = await mail.spooler.store.send_receipt(first, time.time())
    skipped = await mail.spooler.store.send_receipt(second, time.time())
    assert EventType.REPORT in {e.type for e in taken}
    assert EventType.REPORT not in {e.type for e in skipped}
    assert await mail.spooler.store.get(second.mdn.id if second.mdn else "") is None
    assert len(await mail.spooler.folder("ann@example.org")) == 1
