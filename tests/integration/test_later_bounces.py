"""A hard bounce that comes back later as mail (spooler/bounces.py): a relay took the message,
then reported it undeliverable in an RFC 3464 report to the sender. A report about a message
msgspool really relayed to that address (its Message-ID returned) suppresses the address as a
hard bounce in the session would; one naming a message never sent, a full mailbox (5.2.2), or an
address the message was not relayed to, suppresses nothing."""

from __future__ import annotations

import asyncio
import time

from msgspool.domain.bounces import message_id_of
from msgspool.spooler.runtime import Spooler
from tests.conftest import SpoolerFactory
from tests.support.sink import Sink

NOTE = b"From: alice@localhost\r\nTo: bob@remote.example\r\nSubject: hello\r\nMessage-ID: <n1@mx.test>\r\n\r\nhi\r\n"


def dsn(message_id: str, address: str = "bob@remote.example", status: str = "5.1.1") -> bytes:
    return (
        "From: MAILER-DAEMON@relay.example\r\nTo: alice@localhost\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nIt could not be delivered.\r\n\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.example\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{address}>: User unknown\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: alice@localhost\r\nTo: {address}\r\nMessage-ID: {message_id}\r\n\r\n--B--\r\n").encode()


async def relayed(spooler: Spooler, queue_id: str) -> None:
    for _ in range(200):
        if [r["status"] for r in (await spooler.message(queue_id))["recipients"]] == ["delivered"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(await spooler.message(queue_id))


async def listed(spooler: Spooler, wait: float = 5.0) -> dict[str, object]:
    deadline = time.monotonic() + wait
    while True:
        entries = {e.address: e for e in await spooler.suppressions()}
        if entries or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.05)


async def test_a_later_report_about_a_relayed_message_suppresses_its_address(spooler_factory: SpoolerFactory,
                                                                            sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        queue_id = await spooler.send(NOTE, sender="alice@localhost", recipients=["bob@remote.example"])
        await relayed(spooler, queue_id)
        sent_id = message_id_of(sink.messages[0].content)
        assert sent_id == "<n1@mx.test>"
        await spooler.send(dsn(sent_id), sender="", recipients=["alice@localhost"])
        entries = await listed(spooler)
        assert list(entries) == ["bob@remote.example"]
        entry = entries["bob@remote.example"]
        assert entry.source == "bounce" and entry.message_id == queue_id  # type: ignore[attr-defined]
        assert "550 5.1.1" in entry.reason and "relay.example" in entry.reason  # type: ignore[attr-defined]
        again = await spooler.send(NOTE, sender="alice@localhost", recipients=["bob@remote.example"])
        [r] = (await spooler.message(again))["recipients"]
        assert r["status"] == "failed" and "suppressed" in r["last_reply"]  # no attempt: failed at the commit
        assert len(sink.messages) == 1


async def test_a_report_that_names_no_message_relayed_to_the_address_suppresses_nothing(
        spooler_factory: SpoolerFactory, sink: Sink) -> None:
    async with spooler_factory(relay=sink.address) as spooler:
        queue_id = await spooler.send(NOTE, sender="alice@localhost", recipients=["bob@remote.example"])
        await relayed(spooler, queue_id)
        for forged in (dsn("<never-sent@elsewhere>"),  # a Message-ID msgspool never sent: anyone may write one
                       dsn("<n1@mx.test>", address="carol@remote.example"),  # not a recipient of that message
                       dsn("<n1@mx.test>", status="5.2.2")):  # a full mailbox: no hard bounce
            await spooler.send(forged, sender="", recipients=["alice@localhost"])
        await spooler.send(dsn("<n1@mx.test>"), sender="someone@example.org", recipients=["alice@localhost"])
        assert await listed(spooler, wait=1.5) == {}  # (not from the null sender: the last is no report)
