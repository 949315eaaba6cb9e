"""A message's content over the HTTP API (issue 13.1): raw as message/rfc822, parsed (headers,
text, HTML, the attachments with their sizes), one attachment by index; a mailbox's folders and
a folder's messages, paged by cursor; the queue list and the event log paged by cursor too."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest

from msgspool.domain.tokens import NewToken, mint
from msgspool.spooler.runtime import Spooler
from msgspool.web.app import start
from tests.conftest import SpoolerFactory
from tests.support.sink import Sink, free_port

PDF = bytes(range(256)) * 40  # 10,240 bytes that no text codec would leave alone


def rich_message() -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "user@example.org", "Caf\u00e9 report"
    msg.set_content("plain words\n")
    msg.add_alternative("<p>html words</p>\n", subtype="html")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="r\u00e9sum\u00e9.pdf")
    msg.add_attachment("a,b\n1,2\n", subtype="csv", filename="table.csv")
    return msg.as_bytes().replace(b"\n", b"\r\n")


@pytest.fixture
async def api(spooler_factory: SpoolerFactory, sink: Sink) -> AsyncIterator[tuple[Spooler, str]]:
    port = free_port()
    async with spooler_factory(relay=sink.address, local_domains=["example.org"]) as spooler:
        runner = await start(spooler, "127.0.0.1", port)
        try:
            yield spooler, f"http://127.0.0.1:{port}/api"
        finally:
            await runner.cleanup()


async def submit(http: aiohttp.ClientSession, base: str, content: bytes, to: str = "user@example.org") -> Any:
    created = await http.post(f"{base}/messages", json={"sender": "a@example.org", "recipients": [to],
                                                        "content": content.decode()})
    assert created.status == 201, await created.text()
    return await created.json()


async def test_a_message_content_raw_parsed_and_an_attachment(api: tuple[Spooler, str]) -> None:
    spooler, base = api
    raw = rich_message()
    async with aiohttp.ClientSession() as http:
        message_id = (await submit(http, base, raw))["id"]
        got = await http.get(f"{base}/queue/{message_id}/content")
        assert got.status == 200, await got.text()  # was 405: no GET route for content
        assert got.content_type == "message/rfc822"
        stored = await got.read()
        assert stored == await spooler.store.content(message_id) and b"plain words" in stored
        parsed = await (await http.get(f"{base}/queue/{message_id}/parsed")).json()
        pdf = await http.get(f"{base}/queue/{message_id}/attachments/0")
        csv = await http.get(f"{base}/queue/{message_id}/attachments/1")
        missing = await http.get(f"{base}/queue/{message_id}/attachments/2")
        unknown = await http.get(f"{base}/queue/NOSUCHID/parsed")
    assert parsed["subject"] == "Caf\u00e9 report" and ["Subject", "Caf\u00e9 report"] in parsed["headers"]
    assert parsed["text"] == "plain words\r\n" or parsed["text"].strip() == "plain words"
    assert parsed["html"].strip() == "<p>html words</p>"
    assert parsed["attachments"] == [
        {"index": 0, "filename": "r\u00e9sum\u00e9.pdf", "content_type": "application/pdf", "size": len(PDF)},
        {"index": 1, "filename": "table.csv", "content_type": "text/csv", "size": len(b"a,b\r\n1,2\r\n")}]
    assert pdf.status == 200 and pdf.content_type == "application/pdf" and await pdf.read() == PDF
    assert "attachment" in pdf.headers["Content-Disposition"]
    assert csv.status == 200 and (await csv.read()).replace(b"\r\n", b"\n") == b"a,b\n1,2\n"
    assert missing.status == 404 and missing.content_type == "application/problem+json"
    assert unknown.status == 404 and unknown.content_type == "application/problem+json"


async def test_a_mailbox_lists_its_folders_and_pages_through_one(api: tuple[Spooler, str]) -> None:
    _spooler, base = api
    async with aiohttp.ClientSession() as http:
        ids = [(await submit(http, base, f"Subject: n{i}\r\n\r\nbody {i}\r\n".encode()))["id"] for i in range(5)]
        folders = await (await http.get(f"{base}/mailboxes/user@example.org/folders")).json()
        assert "inbox" in folders["folders"] and folders["mailbox"] == "user@example.org"
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = await http.get(f"{base}/mailboxes/user@example.org/folders/inbox/messages", params=query)
            assert page.status == 200, await page.text()
            body = await page.json()
            seen += [m["id"] for m in body["messages"]]
            pages += 1
            cursor = body["next_cursor"]
            assert page.headers.get("Next-Cursor") == cursor
            if cursor is None:
                break
        nobody = await http.get(f"{base}/mailboxes/nobody@example.org/folders")
        bad = await http.get(f"{base}/mailboxes/user@example.org/folders/inbox/messages", params={"cursor": "zz"})
    assert pages == 3 and len(seen) == 5 and len(set(seen)) == 5
    filed = await _filed_ids(base, ids)
    assert set(seen) == filed
    assert nobody.status == 404
    assert bad.status == 400 and (await bad.json())["field"] == "cursor"


async def _filed_ids(base: str, ids: list[str]) -> set[str]:
    """The ids of the inbox copies, as the outbox message shows them (a local recipient is filed)."""
    async with aiohttp.ClientSession() as http:
        listed = await (await http.get(f"{base}/queue", params={"folder": "inbox"})).json()
    return {m["id"] for m in listed}


async def test_the_queue_list_and_the_event_log_page_by_cursor(api: tuple[Spooler, str]) -> None:
    spooler, base = api
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            await submit(http, base, f"Subject: n{i}\r\n\r\nx\r\n".encode(), to="far@example.net")
        everything = [m["id"] for m in await (await http.get(f"{base}/queue", params={"folder": "outbox,sent"}))
                      .json()]
        paged: list[str] = []
        url: str | None = f"{base}/queue?folder=outbox,sent&limit=2"
        while url:
            page = await http.get(url)
            paged += [m["id"] for m in await page.json()]
            link = page.headers.get("Link")
            url = link[1:link.index(">")] if link else None
            if url and url.startswith("/"):
                url = base.removesuffix("/api") + url
        events: list[int] = []
        cursor: str | None = None
        while True:
            page = await (await http.get(f"{base}/events/log", params={"limit": "3", **(
                {"cursor": cursor} if cursor else {})})).json()
            events += [e["id"] for e in page["events"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        submitted = await (await http.get(f"{base}/events/log", params={"types": "submitted"})).json()
        unknown = await http.get(f"{base}/events/log", params={"types": "nonsense"})
    assert len(everything) == 5 and paged == everything
    assert len(submitted["events"]) == 5 and {e["type"] for e in submitted["events"]} == {"submitted"}
    assert unknown.status == 400 and (await unknown.json())["field"] == "types"
    stored = [e.id for e in await spooler.store.events_after(0, 1000)]
    assert events == stored and len(events) >= 5


async def test_the_queue_list_filters_by_selector_server_side_and_pages(
        spooler_factory: SpoolerFactory) -> None:
    port = free_port()
    async with spooler_factory(deliver=False, local_domains=["example.org"]) as spooler:
        runner = await start(spooler, "127.0.0.1", port)
        base = f"http://127.0.0.1:{port}/api"
        try:
            async with aiohttp.ClientSession() as http:
                net = [(await submit(http, base, b"Subject: a\r\n\r\nx\r\n", to=f"u{i}@example.net"))["id"]
                       for i in range(5)]
                com = [(await submit(http, base, b"Subject: b\r\n\r\nx\r\n", to="v@example.com"))["id"]
                       for _ in range(2)]
                await spooler.hold(com[:1])
                by_term = await (await http.get(f"{base}/queue", params={"recipient": "@example.net"})).json()
                by_where = await (await http.get(f"{base}/queue", params={"where": "recipient=@example.com"})).json()
                both = await (await http.get(f"{base}/queue", params={"where": "recipient=@example.com",
                                                                      "status": "held"})).json()
                paged: list[str] = []
                cursor: str | None = None
                while True:
                    page = await http.get(f"{base}/queue", params={"recipient": "@example.net", "limit": "2",
                                                                   **({"cursor": cursor} if cursor else {})})
                    paged += [m["id"] for m in await page.json()]
                    cursor = page.headers.get("Next-Cursor")
                    if cursor is None:
                        break
                bad = await http.get(f"{base}/queue", params={"where": "colour=blue"})
                mixed = await http.get(f"{base}/queue", params={"status": "held", "folder": "inbox"})
                mixed_body = await mixed.json()
        finally:
            await runner.cleanup()
    assert sorted(m["id"] for m in by_term) == sorted(net) and "history" not in by_term[0]
    assert sorted(m["id"] for m in by_where) == sorted(com)
    assert [m["id"] for m in both] == com[:1]
    assert paged == sorted(net)
    assert bad.status == 400 and (await bad.json())["field"] == "where"
    assert mixed.status == 200 and mixed_body == []  # a search of any folder: no held recipient in inboxes


async def test_a_message_s_events_give_each_recipient_s_attempts_with_the_reply(
        api: tuple[Spooler, str], sink: Sink) -> None:
    _spooler, base = api
    async with aiohttp.ClientSession() as http:
        message_id = (await submit(http, base, b"Subject: a\r\n\r\nx\r\n", to="far@example.net"))["id"]
        await sink.async_wait_for(1)
        for _ in range(100):
            body = await (await http.get(f"{base}/queue/{message_id}/events")).json()
            if "delivered" in {e["type"] for e in body["events"]}:
                break
            await asyncio.sleep(0.05)
        unknown = await http.get(f"{base}/queue/NOSUCHID/events")
    assert [e["type"] for e in body["events"]][:1] == ["submitted"]
    (delivered,) = body["recipients"]["far@example.net"]
    assert delivered["type"] == "delivered" and delivered["reply"].startswith("250")
    assert body["message_id"] == message_id and body["next_cursor"] is None
    assert unknown.status == 404


async def test_api_v1_is_the_same_api_and_the_document_needs_no_token(api: tuple[Spooler, str]) -> None:
    spooler, base = api
    root = base.removesuffix("/api")
    async with aiohttp.ClientSession() as http:
        created = await http.post(f"{root}/api/v1/messages", json={
            "sender": "a@example.org", "recipients": ["user@example.org"], "content": "Subject: v1\r\n\r\nx\r\n"})
        assert created.status == 201
        message_id = (await created.json())["id"]
        same = [await (await http.get(f"{root}{prefix}/queue/{message_id}")).json() for prefix in ("/api", "/api/v1")]
        await spooler.store.create_token(_new_token())
        refused = await http.get(f"{root}/api/v1/queue/{message_id}")
        document = await http.get(f"{root}/api/openapi.json")
        body = await document.json()
    assert same[0] == same[1] and same[0]["id"] == message_id
    assert refused.status == 401  # once a token exists, every route but the document wants one
    assert document.status == 200 and body["openapi"] == "3.1.0"


def _new_token() -> NewToken:
    return mint(frozenset({"read"}), "doc-test", time.time())


async def test_a_raw_message_is_submitted_as_message_rfc822(api: tuple[Spooler, str]) -> None:
    spooler, base = api
    raw = (b"From: a@example.org\r\nTo: user@example.org\r\nCc: far@example.net\r\nBcc: hidden@example.org\r\n"
           b"Subject: raw\r\n\r\nraw body\r\n")
    headers = {"Content-Type": "message/rfc822"}
    async with aiohttp.ClientSession() as http:
        from_headers = await http.post(f"{base}/messages", data=raw, headers=headers,
                                       params={"sender": "a@example.org"})
        body = await from_headers.json()
        explicit = await http.post(f"{base}/messages", data=raw, headers=headers,
                                   params=[("sender", "a@example.org"), ("recipient", "user@example.org")])
        explicit_body = await explicit.json()
        empty = await http.post(f"{base}/messages", data=b"", headers=headers)
        plain = await http.post(f"{base}/messages", data=raw, headers={"Content-Type": "text/plain"})
    assert from_headers.status == 201, body
    assert sorted(r["address"] for r in body["recipients"]) == [
        "far@example.net", "hidden@example.org", "user@example.org"]
    stored = await spooler.store.content(body["id"])
    assert stored is not None and b"raw body" in stored and b"hidden@example.org" not in stored  # Bcc removed
    assert explicit.status == 201 and [r["address"] for r in explicit_body["recipients"]] == ["user@example.org"]
    assert empty.status == 400 and plain.status == 415
