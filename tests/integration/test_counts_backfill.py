"""A spool made before the queue's counts were kept (schema 16) gets them computed from its rows
once, when a newer msgspool opens it; from then on the triggers keep them (issue 13.7)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from msgspool.stores import ops
from msgspool.stores.sqlite import DB_NAME, SCHEMA_VERSION, SQLiteStore
from tests.contract.conftest import submit

TRIGGERS = ("counts_recipient_insert", "counts_recipient_delete", "counts_recipient_update",
            "counts_message_insert", "counts_message_delete", "counts_message_folder")


async def test_an_older_spool_gets_its_counts_from_its_rows_once(tmp_path: Path) -> None:
    path = tmp_path / "spool" / DB_NAME
    store = SQLiteStore(path)
    await store.open()
    now = time.time()
    for n in range(5):
        await submit(store, f"b{n}@example.com", "https://hooks.test/in", addrtypes=["SMTP", "HTTP"], now=now)
    held = await submit(store, "c@example.com", now=now)
    await store.hold([held.id], now)
    await store.close()
    with sqlite3.connect(path) as conn:  # as schema 16 left it: no counts, no triggers
        for trigger in TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE outbox_counts")
        conn.execute("DROP TABLE destination_counts")
        conn.execute("PRAGMA user_version = 16")
    await submit_with_old_schema(path)

    store = SQLiteStore(path)
    await store.open()
    try:
        counts = await store.counts()
        assert counts == await store.read(ops.scanned_queue_counts)
        assert (counts["messages"], counts["queued"], counts["held"]) == (7, 12, 1)
        assert sorted(await store.destination_counts()) == sorted(await store.read(ops.scanned_destination_counts))
        await submit(store, "d@example.com", now=now)  # the triggers count on from the backfill
        assert (await store.counts())["messages"] == 8
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def submit_with_old_schema(path: Path) -> None:
    """One more message written while no trigger counts: the backfill must count it too."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT * FROM messages LIMIT 1").fetchone()
        columns = [c[1] for c in conn.execute("PRAGMA table_info(messages)")]
        values = dict(zip(columns, row, strict=True), id="older-one")
        conn.execute(f"INSERT INTO messages ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                     list(values.values()))
        rows = conn.execute("SELECT * FROM recipients WHERE message_id = ?", (row[0],)).fetchall()
        rcolumns = [c[1] for c in conn.execute("PRAGMA table_info(recipients)")]
        for r in rows:
            rv = dict(zip(rcolumns, r, strict=True), message_id="older-one")
            conn.execute(f"INSERT INTO recipients ({', '.join(rcolumns)}) VALUES ({', '.join('?' * len(rcolumns))})",
                         list(rv.values()))
