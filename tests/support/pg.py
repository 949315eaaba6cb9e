"""A PostgreSQL database of its own for each test that needs one (issue 11).

The server is the machine's (127.0.0.1:5432, user postgres, trust; MSGSPOOL_TEST_PG overrides the
URL of the maintenance database). Outside CI a test skips when no server answers; with CI=true it
fails instead, so the PostgreSQL suite can never silently not run.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ADMIN_URL = os.environ.get("MSGSPOOL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def available() -> bool:
    import psycopg
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def require() -> None:
    if available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is not reachable at {ADMIN_URL}, and CI must run the PostgreSQL tests")
    pytest.skip(f"no PostgreSQL at {ADMIN_URL}")


def url_in_schema(schema: str) -> str:
    """The URL of the test database whose connections see `schema` first (search_path)."""
    return f"{ADMIN_URL}{'&' if '?' in ADMIN_URL else '?'}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty spool database — a schema of its own in the test database (a
    CREATE DATABASE costs ~0.6 s with its checkpoint, a schema ~10 ms), dropped afterwards with
    everything in it."""
    import psycopg
    require()
    schema = f"msgspool_t_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield url_in_schema(schema)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '10s'")  # a node killed mid-transaction: its backend ends soon
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def table_text(url: str, table: str) -> str:
    """Every row of `table`, as text: what someone who reads the database would see."""
    import psycopg
    with psycopg.connect(url) as conn:
        return "\n".join(repr(row) for row in conn.execute(f"SELECT * FROM {table}"))
