"""The Python API as an application uses it: open a spool, send an EmailMessage, follow its events."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import pytest

import msgspool
from msgspool import EventType
from tests.support.sink import Sink


def note() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "App <app@example.org>"
    msg["To"] = "user@example.com"
    msg["Bcc"] = "audit@example.net"
    msg["Subject"] = "Hi"
    msg.set_content("Hello")
    return msg


async def test_send_takes_recipients_from_headers_hides_bcc_and_reports_delivery(tmp_path: Path,
                                                                                  sink: Sink) -> None:
    async with msgspool.open_spool(str(tmp_path / "spool"), relay=sink.address, smtp_listen="",
                                   http_listen="", hostname="app.test") as spool:
        events = spool.events(types=[EventType.SUBMITTED, EventType.DELIVERED])
        queue_id = await spool.send(note())
        seen = [await asyncio.wait_for(anext(events), 5) for _ in range(3)]
        info = await spool.message(queue_id)
    assert [e.type for e in seen] == [EventType.SUBMITTED, EventType.DELIVERED, EventType.DELIVERED]
    assert {e.recipient for e in seen[1:]} == {"user@example.com", "audit@example.net"}
    assert info["sender"] == "app@example.org"
    assert {r["status"] for r in info["recipients"]} == {"delivered"}
    content = sink.messages[0].content
    assert b"Bcc:" not in content
    assert b"\r\nMessage-ID: <" in content and b"\r\nDate: " in content  # completed, RFC 5322 §3.6


async def test_submit_without_delivery_leaves_the_message_queued_for_the_daemon(tmp_path: Path) -> None:
    async with msgspool.open_spool(str(tmp_path / "spool"), deliver=False, relay="127.0.0.1:9") as spool:
        queue_id = await spool.send(b"Subject: x\r\n\r\nbody\r\n", sender="a@example.org",
                                    recipients=["b@example.com"])
        info = await spool.message(queue_id)
    assert info["recipients"][0]["status"] == "queued"


async def test_unknown_message_id_raises_not_found(tmp_path: Path) -> None:
    async with msgspool.open_spool(str(tmp_path / "spool"), deliver=False) as spool:
        with pytest.raises(msgspool.NotFound):
            await spool.message("NOSUCHID")


async def test_send_carries_dsn_requests(tmp_path: Path) -> None:
    from msgspool.domain.dsn import MessageDSN, Notify, RecipientDSN, Ret

    async with msgspool.open_spool(str(tmp_path / "spool"), deliver=False) as spool:
        queue_id = await spool.send(note(), notify=RecipientDSN(frozenset({Notify.FAILURE})),
                                    dsn=MessageDSN(Ret.FULL, "e1"))
        info = await spool.message(queue_id)
    assert (info["ret"], info["envid"]) == ("FULL", "e1")
    assert {r["notify"] for r in info["recipients"]} == {"FAILURE"}


async def test_send_to_an_alias_delivers_to_its_members_and_to_its_owner_as_sender(tmp_path: Path,
                                                                                   sink: Sink) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("devs: ann, ext@example.com\nowner-devs: ann\n")
    async with msgspool.open_spool(str(tmp_path / "spool"), relay=sink.address, smtp_listen="", http_listen="",
                                   aliases=str(aliases)) as spool:
        queue_id = await spool.send(b"Subject: x\r\n\r\nbody\r\n", sender="app@example.org",
                                    recipients=["devs@localhost"])
        await asyncio.to_thread(sink.wait_for, 1)
        info = await spool.message(queue_id)
    [got] = sink.messages
    assert (got.sender, got.recipients) == ("owner-devs@localhost", ["ext@example.com"])
    assert any(h["detail"].startswith("ann@localhost: expanded from devs@localhost") for h in info["history"])
