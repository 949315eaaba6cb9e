"""Store.search: a queue search across folders (domain/selector.py's terms), paged by id with a
cursor, the same on every store; a sparse search's pages are bounded (stores/search.py)."""

from __future__ import annotations

import time

import pytest

from msgspool.domain.selector import Selector, parse_selector
from msgspool.ports import Store
from msgspool.stores import search
from tests.contract.conftest import submit


async def found(store: Store, where: str, now: float, limit: int = 100, newest_first: bool = False) -> list[str]:
    """Every id the search finds, page after page to the end ("": no term, the outbox)."""
    out: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        page, cursor = await store.search(parse_selector(where) if where else Selector(), now, after=cursor,
                                          limit=limit, newest_first=newest_first)
        out += [info.id for info in page]
    return out


def mail(subject: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


async def test_each_search_term_finds_its_messages_in_any_folder(store: Store) -> None:
    now = time.time()
    old = await submit(store, "x@example.com", sender="Old@Example.net", content=mail("Invoice 17"), now=now - 7200)
    new = await submit(store, "y@example.com", content=mail("=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Wien"), now=now - 60)
    filed = await submit(store, "bob@example.org", content=mail("for Bob: invoice 18"), now=now - 30)
    [copy] = [info.id for info in (await store.search(parse_selector("mailbox=bob@example.org"), now))[0]]
    assert await found(store, "subject=INVOICE", now) == [old.id]  # the outbox by default
    assert await found(store, "subject=invoice,folder=*", now) == sorted([old.id, filed.id, copy])
    assert await found(store, "subject=grüße", now) == [new.id]  # decoded (RFC 2047), any case
    assert await found(store, "subject=100%", now) == []  # LIKE wildcards are literal
    assert await found(store, "folder=inbox", now) == [copy]
    assert await found(store, "folder=inbox|outbox", now) == sorted([old.id, new.id, copy])
    assert await found(store, "mailbox=Bob@example.org", now) == [copy]
    assert await found(store, "mailbox=<>,folder=outbox", now) == sorted([old.id, new.id])
    assert await found(store, "mailbox=<>", now) == sorted([old.id, new.id, filed.id])
    assert await found(store, "newer-than=10m", now) == [new.id]
    assert await found(store, "newer-than=10m,folder=*", now) == sorted([new.id, filed.id, copy])
    assert await found(store, "older-than=1h", now) == [old.id]
    assert await found(store, "sender=@example.NET", now) == [old.id]
    assert await found(store, "sender=old@example.net,subject=invoice", now) == [old.id]
    assert await found(store, "recipient=@example.com,status=queued", now) == sorted([old.id, new.id])
    assert await found(store, "recipient=Y@example.com", now) == [new.id]
    assert await found(store, "destination=relay.test:25,newer-than=1h", now) == [new.id]
    assert await found(store, "status=delivered", now) == []
    listed, _ = await store.search(parse_selector("recipient=y@example.com"), now)
    assert listed[0].subject == "Grüße aus Wien" and listed[0].recipients[0]["address"] == "y@example.com"
    assert listed[0].history is None  # as a listing shows it
    assert await found(store, "folder=sent", now) == [filed.id]  # local only: filed at once, so sent


async def test_pages_follow_the_cursor_in_id_order(store: Store) -> None:
    now = time.time()
    sent = sorted([(await submit(store, f"r{i}@example.com", now=now - 10)).id for i in range(7)])
    where = parse_selector("destination=relay.test:25")
    first, cursor = await store.search(where, now, limit=3)
    assert [m.id for m in first] == sent[:3] and cursor == sent[2]
    assert await found(store, "destination=relay.test:25", now, limit=3) == sent
    last, end = await store.search(where, now, after=sent[4], limit=2)
    assert [m.id for m in last] == sent[5:] and end is None
    assert await store.search(where, now, limit=0) == ([], None)
    # what an action's chunk reads: which exist, or the listing of them, in one read each
    assert await store.existing([sent[6], "NOSUCHMESSAGE", sent[0]]) == {sent[0], sent[6]}
    assert [m.id for m in await store.messages([sent[6], "NOSUCHMESSAGE", sent[0]])] == [sent[0], sent[6]]
    assert await store.existing([]) == set() and await store.messages([]) == []


async def test_newest_first_pages_go_backwards_from_the_cursor_with_every_term(store: Store) -> None:
    now = time.time()
    sent = sorted([(await submit(store, f"r{i}@example.com", content=mail(f"note {i % 2}"), now=now - 100 + i)).id
                   for i in range(7)])
    newest = sent[::-1]
    where = parse_selector("destination=relay.test:25")
    first, cursor = await store.search(where, now, limit=3, newest_first=True)
    assert [m.id for m in first] == newest[:3] and cursor == newest[2]
    after, cursor = await store.search(where, now, after=cursor, limit=3, newest_first=True)
    assert [m.id for m in after] == newest[3:6] and cursor == newest[5]
    last, end = await store.search(where, now, after=cursor, limit=3, newest_first=True)
    assert [m.id for m in last] == newest[6:] and end is None
    for text in ("", "destination=relay.test:25", "status=queued", "recipient=@example.com", "folder=*",
                 "subject=note 1", "newer-than=1h", "older-than=50s", "sender=a@example.org"):
        forwards = await found(store, text, now, limit=2)
        assert forwards and await found(store, text, now, limit=2, newest_first=True) == forwards[::-1], text
    assert await found(store, "recipient=r3@example.com", now, newest_first=True) == [sent[3]]


async def test_a_sparse_search_reads_a_bounded_window_per_page_and_goes_on(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    ids = sorted([(await submit(store, f"r{i}@example.com", content=mail(f"note {i}"),
                                 now=now - 10 + i / 100)).id
                  for i in range(9)])
    monkeypatch.setattr(search, "SEARCH_BUDGET", 4)
    page, cursor = await store.search(parse_selector("subject=note 8"), now, limit=10)
    assert page == [] and cursor == ids[3]  # four candidates read, none matched: go on from the fourth
    assert await found(store, "subject=note 8", now, limit=10) == [ids[8]]
    assert await found(store, "subject=note", now, limit=10) == ids  # every page short, none lost
    page, cursor = await store.search(parse_selector("subject=note 0"), now, limit=10, newest_first=True)
    assert page == [] and cursor == ids[5]  # newest first: the four newest read, none matched
    assert await found(store, "subject=note 0", now, limit=10, newest_first=True) == [ids[0]]
    assert await found(store, "subject=note", now, limit=10, newest_first=True) == ids[::-1]
