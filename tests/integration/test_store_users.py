"""The `users` table in a real SQLite spool: added to a spool made before it (what every store
does with users is in tests/contract/test_credentials.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from msgspool.stores.sqlite import SCHEMA_VERSION, SQLiteStore, connect, create_schema


async def test_a_version_7_spool_gets_the_users_table_on_open_and_opening_again_changes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    conn = connect(path)
    create_schema(conn)
    conn.execute("DROP TABLE users")
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    for _ in range(2):
        store = SQLiteStore(path)
        await store.open()
        assert await store.user("alice@example.org") is None
        await store.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
