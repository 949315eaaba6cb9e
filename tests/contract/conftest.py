"""The contract suite: one set of tests that every message store passes, unchanged (issue 11.2).

The tests use only the public async API of the roles in ports.py, and assert what a user relies
on (what is claimed, what a listing shows, which report is owed, how often), never a store's
tables. A store joins the suite with one entry in `STORES`:

    async def make_NAME(tmp_path: Path) -> AsyncIterator[Callable[[], Store]]

an async generator that sets up an empty spool of its own (a directory under `tmp_path`, a fresh
database), yields a function that makes a new, unopened store on that spool — as many as a test
asks for, as several processes (the daemon, the CLI) each have their own — and removes the spool
after the test. The `store` fixture is one of them, opened; `new_store` makes more.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from msgspool.domain.address import SMTP
from msgspool.domain.message import Message
from msgspool.domain.routing import Router, TransportRoute
from msgspool.ports import Store
from msgspool.spooler.intake import Intake, Submission
from msgspool.stores.sqlite import DB_NAME, SQLiteStore
from tests.support import pg

SpoolFactory = Callable[[Path], AsyncIterator[Callable[[], Store]]]


async def make_sqlite(tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    path = tmp_path / "spool" / DB_NAME
    yield lambda: SQLiteStore(path)


async def make_memory(tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    from msgspool.stores import memory

    name = str(tmp_path / "spool")
    yield lambda: memory.MemoryStore(name)
    memory.forget(name)


async def make_postgresql(tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    """A fresh schema on the test server (tests/support/pg.py: skipped outside CI when none answers)."""
    from msgspool.stores.postgresql import PostgresStore

    with pg.fresh_database() as url:
        yield lambda: PostgresStore(url)


STORES: dict[str, SpoolFactory] = {"memory": make_memory, "sqlite": make_sqlite, "postgresql": make_postgresql}


@pytest.fixture(params=sorted(STORES))
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Store]]:
    """Makes unopened stores on one empty spool of the store under test."""
    async with asynccontextmanager(STORES[request.param])(tmp_path) as make:
        yield make


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    opened = new_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- messages as intake builds them ---------------------------------------------------------

LOCAL_DOMAIN = "example.org"  # mail for it is filed into local mailboxes at submission
RELAY = "relay.test:25"  # every other SMTP address goes there; HTTP ones to their origin; others nowhere
ROUTER = Router([LOCAL_DOMAIN], [TransportRoute("smtp", frozenset({SMTP}), lambda _address: RELAY),
                                 TransportRoute("http", frozenset({"HTTP"}), lambda url: url.split("/")[2])])
CONTENT = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: contract\r\n\r\nbody\r\n"


def build(*recipients: str, now: float | None = None, **kw: Any) -> tuple[Message, list[Message]]:
    """The outbox message and local copies intake would commit for this submission, routed."""
    kw.setdefault("content", CONTENT)
    sub = Submission(sender=kw.pop("sender", "a@example.org"), recipients=list(recipients), **kw)
    return Intake(ROUTER).build(sub, time.time() if now is None else now)


async def submit(store: Store, *recipients: str, now: float | None = None, **kw: Any) -> Message:
    """Submit as intake does; returns the message as submitted."""
    message, copies = build(*recipients, now=now, **kw)
    await store.submit(message, copies)
    return message


async def statuses(store: Store, message_id: str) -> list[str]:
    info = await store.get(message_id)
    assert info is not None, f"message {message_id} is gone"
    return [r["status"] for r in info.recipients]


def ids(messages: Sequence[Message]) -> list[str]:
    return [m.id for m in messages]
