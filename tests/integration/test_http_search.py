"""The queue search over HTTP (GET /api/queue, issue 13.4): every term of domain/selector.py as a
parameter or in `where`, across folders and mailboxes, paged by cursor; a bad term is a problem
400 naming it; the OpenAPI document describes every term."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from msgspool.domain.recipient import Status
from msgspool.web.app import SEARCH_TERMS, start
from tests.conftest import SpoolerFactory
from tests.support.sink import free_port


async def submit(http: aiohttp.ClientSession, base: str, subject: str, to: str, sender: str = "a@example.org") -> str:
    content = f"From: {sender}\r\nSubject: {subject}\r\n\r\nx\r\n"
    created = await http.post(f"{base}/messages", json={"sender": sender, "recipients": [to], "content": content})
    assert created.status == 201, await created.text()
    body: dict[str, Any] = await created.json()
    return str(body["id"])


async def test_the_queue_search_takes_every_term_across_folders(spooler_factory: SpoolerFactory) -> None:
    port = free_port()
    refused = f"127.0.0.1:{free_port()}"  # nothing listens: remote mail stays in the outbox, deferred
    async with spooler_factory(relay=refused, local_domains=["example.org"]) as spooler:
        runner = await start(spooler, "127.0.0.1", port)
        base = f"http://127.0.0.1:{port}/api"
        try:
            async with aiohttp.ClientSession() as http:
                invoice = await submit(http, base, "Invoice 2026-12", "x@example.net", sender="billing@shop.example")
                hello = await submit(http, base, "Hello, world", "bob@example.org")  # filed for bob at once
                other = await submit(http, base, "other", "y@example.com")

                async def ids(**query: str) -> list[str]:
                    answer = await http.get(f"{base}/queue", params=query)
                    assert answer.status == 200, await answer.text()
                    return [m["id"] for m in await answer.json()]

                for _ in range(100):  # local mail is filed by the delivery loop, at once
                    if await ids(folder="sent"):
                        break
                    await asyncio.sleep(0.05)
                outbox = await ids()
                by_subject = await ids(subject="invoice")
                comma = await ids(subject="hello, W", folder="*")
                inbox = await ids(folder="inbox", mailbox="Bob@example.org")
                bob = await ids(mailbox="bob@example.org")
                sent = await ids(folder="sent")
                both = await ids(folder="outbox,sent")
                young = await ids(newer_than="1h", sender="@shop.example")
                old = await ids(older_than="1h")
                where = await ids(where="recipient=@example.com,newer-than=1d")
                page = await http.get(f"{base}/queue", params={"limit": "1", "folder": "*"})
                listed = (await page.json())[0]
                rest = await ids(folder="*", cursor=page.headers["Next-Cursor"])
                newest = await http.get(f"{base}/queue", params={"limit": "2", "folder": "*", "order": "newest"})
                newest_first = [m["id"] for m in await newest.json()]
                link = newest.headers["Link"].split(">")[0].lstrip("<")  # goes on in the same order
                older = [m["id"] for m in await (await http.get(f"http://127.0.0.1:{port}{link}")).json()]
                bad = {name: await http.get(f"{base}/queue", params=query) for name, query in {
                    "status": {"status": "lost"}, "older_than": {"older_than": "soon"},
                    "newer_than": {"newer_than": "5"}, "sender": {"sender": "nobody"},
                    "folder": {"folder": "in box"}, "subject": {"subject": "x" * 201},
                    "twice": {"where": "status=held", "status": "held"}, "where": {"where": "colour=blue"},
                    "cursor": {"cursor": "not-ours"}, "order": {"order": "random"}}.items()}
                problems = {name: (answer.status, answer.content_type, (await answer.json())["detail"])
                            for name, answer in bad.items()}
                document = await (await http.get(f"{base}/openapi.json")).json()
        finally:
            await runner.cleanup()
    [copy] = inbox
    assert outbox == sorted([invoice, other]) and by_subject == [invoice]
    assert comma == sorted([hello, copy]) and bob == [copy] and sent == [hello]
    assert both == sorted([invoice, hello, other]) and young == [invoice] and old == []
    assert where == [other]
    assert listed["id"] == min(invoice, hello, other, copy) and "subject" in listed
    assert sorted([listed["id"], *rest]) == sorted([invoice, hello, other, copy])
    assert newest_first + older == sorted([invoice, hello, other, copy], reverse=True)
    for name, (status, kind, detail) in problems.items():
        assert status == 400 and kind == "application/problem+json", (name, detail)
    assert "status" in problems["status"][2] and "older-than" in problems["older_than"][2]
    assert "given twice" in problems["twice"][2] and "colour" in problems["where"][2]
    documented = {p["name"]: p for p in document["paths"]["/api/queue"]["get"]["parameters"]}
    for term in SEARCH_TERMS:
        assert documented[term].get("description"), term
    assert documented["order"]["schema"]["enum"] == ["oldest", "newest"] and "order" in problems["order"][2]
    assert set(documented["status"]["schema"]["enum"]) == {str(s) for s in Status}
