"""Store.matching: the outbox messages a bulk action's selector picks (domain/selector.py), paged
by id, pinned at the run's start — the same on every store."""

from __future__ import annotations

import time

from msgspool.domain.selector import parse_selector
from msgspool.ports import Store
from tests.contract.conftest import submit


async def picked(store: Store, where: str, now: float, **kw: object) -> list[str]:
    return await store.matching(parse_selector(where), now, **kw)  # type: ignore[arg-type]


async def test_each_term_picks_the_messages_it_names(store: Store) -> None:
    now = time.time()
    old = await submit(store, "x@example.com", sender="Old@Example.net", now=now - 7200)
    web = await submit(store, "https://hooks.example/in", addrtypes=["HTTP"], sender="app@example.net", now=now)
    bounce = await submit(store, "Y@Example.com", sender="", now=now)
    await submit(store, "alice@example.org", now=now)  # local: filed at once, so not in the outbox
    assert await picked(store, "older-than=1h", now + 1) == [old.id]
    assert await picked(store, "sender=old@example.net", now + 1) == [old.id]
    assert sorted(await picked(store, "sender=@EXAMPLE.net", now + 1)) == sorted([old.id, web.id])
    assert await picked(store, "sender=<>", now + 1) == [bounce.id]
    assert await picked(store, "recipient=y@example.com", now + 1) == [bounce.id]
    assert sorted(await picked(store, "destination=relay.test:25", now + 1)) == sorted([old.id, bounce.id])
    assert await picked(store, "transport=http", now + 1) == [web.id]
    assert sorted(await picked(store, "status=queued", now + 1)) == sorted([old.id, web.id, bounce.id])
    assert await picked(store, "status=held", now + 1) == []
    await store.hold([web.id], now)
    assert await picked(store, "status=held", now + 1) == [web.id]
    assert await picked(store, "transport=http,status=queued", now + 1) == []


async def test_recipient_terms_must_hold_for_one_recipient(store: Store) -> None:
    now = time.time()
    both = await submit(store, "a@example.com", "https://hooks.example/in", addrtypes=["SMTP", "HTTP"], now=now)
    assert await picked(store, "transport=http,recipient=https://hooks.example/in", now + 1) == [both.id]
    assert await picked(store, "transport=smtp,recipient=a@example.com", now + 1) == [both.id]
    assert await picked(store, "transport=http,recipient=a@example.com", now + 1) == []


async def test_pages_by_id_and_nothing_submitted_after_the_start(store: Store) -> None:
    now = time.time()
    sent = sorted([(await submit(store, f"r{i}@example.com", now=now - 10)).id for i in range(7)])
    await submit(store, "late@example.com", now=now + 5)
    first = await picked(store, "destination=relay.test:25", now, limit=3)
    rest = await picked(store, "destination=relay.test:25", now, after=first[-1], limit=10)
    assert first == sent[:3] and rest == sent[3:]
