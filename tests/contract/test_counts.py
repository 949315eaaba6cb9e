"""The kept counts (issue 13.7): what `counts()` and `destination_counts()` read — counters the
store keeps with every write — equal the counts computed from the rows, after every kind of write."""

from __future__ import annotations

import time

from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.ports import Store
from msgspool.stores import ops
from msgspool.stores.base import SQLStore
from tests.contract.conftest import build, submit

OK = Reply(250, "2.0.0", "ok")
LATER = Reply(451, "4.3.0", "try later")
NO = Reply(550, "5.1.1", "no such user")


async def assert_counts_match_rows(store: Store) -> dict[str, int]:
    assert isinstance(store, SQLStore)
    kept = await store.counts()
    assert kept == await store.read(ops.scanned_queue_counts)
    assert sorted(await store.destination_counts()) == sorted(await store.read(ops.scanned_destination_counts))
    return kept


async def test_kept_counts_equal_the_rows_after_a_mix_of_writes(store: Store) -> None:
    now = time.time()
    assert await assert_counts_match_rows(store) == {**{str(s): 0 for s in Status}, "messages": 0}
    one = await submit(store, "b@example.com", now=now)
    two = await submit(store, "c@example.com", "d@example.com", "https://hooks.test/in",
                       addrtypes=["SMTP", "SMTP", "HTTP"], now=now)
    held = await submit(store, "e@example.com", "f@example.com", now=now)
    gone = await submit(store, "g@example.com", now=now)
    local, copies = build("bob@example.org", "h@example.com", sender="x@example.com", now=now)
    await store.submit(local, copies)
    await assert_counts_match_rows(store)
    await store.hold([held.id], now)
    await assert_counts_match_rows(store)
    await store.claim(now, 100)
    await assert_counts_match_rows(store)
    await store.settle([Settlement(one.id, 0, "b@example.com", Status.DELIVERED, OK),
                        Settlement(two.id, 0, "c@example.com", Status.DEFERRED, LATER),
                        Settlement(two.id, 1, "d@example.com", Status.FAILED, NO)], now)
    counts = await assert_counts_match_rows(store)
    assert (counts["deferred"], counts["failed"], counts["held"]) == (1, 1, 2)
    await store.delete([gone.id])
    await assert_counts_match_rows(store)
    await store.release([held.id], now)
    await assert_counts_match_rows(store)
    await store.requeue([two.id], now)
    await store.flush(None, now)
    await assert_counts_match_rows(store)
    await store.claim(now + 1, 100)
    await store.settle([Settlement(two.id, 0, "c@example.com", Status.DELIVERED, OK),
                        Settlement(two.id, 2, "https://hooks.test/in", Status.DELIVERED, OK)], now + 1)
    await assert_counts_match_rows(store)
    await store.delete([one.id, two.id, held.id, local.id])
    assert await assert_counts_match_rows(store) == {**{str(s): 0 for s in Status}, "messages": 0}
    assert await store.destination_counts() == []
