"""The kept counts on PostgreSQL (sql/postgresql/0008_counts.sql, issue 13.7): per-statement deltas
summed on read, compacted by any node while others write, and filled from the rows of a spool that
predates them — always equal to the counts computed from the rows."""

from __future__ import annotations

import asyncio
import time

import psycopg

from msgspool.domain.message import Settlement
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import Status
from msgspool.stores import ops
from msgspool.stores.postgresql import PostgresStore
from tests.contract.conftest import submit
from tests.support import pg

OK = Reply(250, "2.0.0", "ok")


async def assert_counts_match_rows(store: PostgresStore) -> dict[str, int]:
    kept = await store.counts()
    assert kept == await store.read(ops.scanned_queue_counts)
    assert sorted(await store.destination_counts()) == sorted(await store.read(ops.scanned_destination_counts))
    return kept


def delta_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM outbox_count_deltas)"
                           " + (SELECT count(*) FROM destination_count_deltas)").fetchone()
        assert row is not None
        return int(row[0])


async def test_compaction_folds_the_deltas_while_two_nodes_write() -> None:
    with pg.fresh_database() as url:
        nodes = [PostgresStore(url), PostgresStore(url)]
        for node in nodes:
            await node.open()
        try:
            now = time.time()

            async def write(node: PostgresStore, n: int) -> None:
                for i in range(n):
                    m = await submit(node, f"r{i}@example.com", "https://hooks.test/in",
                                     addrtypes=["SMTP", "HTTP"], now=now)
                    if i % 3 == 0:
                        await node.hold([m.id], now)

            async def fold() -> int:
                folded = 0
                for _ in range(20):
                    folded += await nodes[0].compact_counts()
                    await asyncio.sleep(0.01)
                return folded

            *_, folded = await asyncio.gather(write(nodes[0], 60), write(nodes[1], 60), fold())
            assert folded > 0
            claimed = await nodes[1].claim(now, 1000)
            assert len(claimed) == 80  # the 40 held of 120 are not claimed
            before = delta_rows(url)
            counts = await assert_counts_match_rows(nodes[1])
            assert counts["messages"] == 120 and counts["held"] == 2 * 40
            await nodes[1].compact_counts()
            assert delta_rows(url) < min(before, 20)  # one row per key left
            assert await assert_counts_match_rows(nodes[0]) == counts
            await nodes[0].settle([Settlement(m.id, r.index, r.address, Status.DELIVERED, OK)
                                   for m in claimed for r in m.recipients], now)
            counts = await assert_counts_match_rows(nodes[0])
            assert (counts["messages"], counts["active"], counts["held"]) == (40, 0, 80)
        finally:
            for node in nodes:
                await node.close()


async def test_a_spool_from_before_the_counts_gets_them_from_its_rows() -> None:
    with pg.fresh_database() as url:
        store = PostgresStore(url)
        await store.open()
        now = time.time()
        for i in range(4):
            await submit(store, f"r{i}@example.com", "s@example.com", now=now)
        await store.close()
        with psycopg.connect(url) as conn:  # as migration 7 left it
            for table in ("recipients", "messages"):
                for op in ("insert", "update", "delete"):
                    conn.execute(f"DROP TRIGGER {table}_count_{op} ON {table}")
            conn.execute("DROP FUNCTION msgspool_count_recipients, msgspool_count_messages")
            conn.execute("DROP TABLE outbox_count_deltas, destination_count_deltas")
            conn.execute("DELETE FROM schema_migrations WHERE version = 8")
        store = PostgresStore(url)
        await store.open()
        try:
            counts = await assert_counts_match_rows(store)
            assert (counts["messages"], counts["queued"]) == (4, 8)
        finally:
            await store.close()


async def test_a_node_that_writes_folds_the_deltas_though_nobody_reads_the_counts() -> None:
    with pg.fresh_database() as url:
        store = PostgresStore(url)
        store.compact_every = 50
        await store.open()
        try:
            now = time.time()
            for i in range(300):
                await submit(store, f"r{i}@example.com", now=now)
            deadline = time.monotonic() + 10
            while delta_rows(url) > 150 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert delta_rows(url) <= 150  # unfolded: 3 rows a message (the message, its recipient twice)
            assert (await assert_counts_match_rows(store))["messages"] == 300
        finally:
            await store.close()
