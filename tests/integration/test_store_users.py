"""The `users` table in a real SQLite spool: added to a spool made before it, found
case-insensitively by the daemon's reader, its hash never the password."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from msgspool.domain.users import User, hash_password, verify_password
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


async def test_the_reader_finds_a_user_whatever_the_case_of_its_name(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    hashed = hash_password("pw", n=2**8)
    writer = SQLiteStore(path)  # `msgspool user add`'s own store
    await writer.open()
    await writer.add_user(User("Alice@Example.org", ("@example.net",), 1.0), hashed)
    await writer.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        found = await store.user("alice@example.ORG")
    finally:
        await store.close()
    assert found is not None
    user, stored = found
    assert user == User("Alice@Example.org", ("@example.net",), 1.0)
    assert verify_password("pw", stored) and "pw" not in stored.split("$")
