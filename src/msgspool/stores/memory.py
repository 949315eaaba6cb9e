"""The store in memory (`store = "memory"`): the SQLite store's schema and steps on an in-memory
database of this process, so every role behaves exactly as on the other stores, and nothing is
written to disk. Nothing survives the process either: it is for tests, for demos, and for an
application that wants a throwaway outbox (Mailpit keeps its mail in memory by default the same way).

One spool per name (`from_settings`: the data directory), shared by every store of that name in
the process, as several stores share one file or one database. Each write is a transaction of its
own, run at once in the caller's thread: in memory there is no fsync to share, so group commit
would only add a hop. `serve` runs it only with `delivery_process = false` (a second process
would have a memory of its own).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from msgspool.errors import NoSpool
from msgspool.ports import Store
from msgspool.stores.base import SQLStore
from msgspool.stores.ops import Tx
from msgspool.stores.sqlite import SQLiteConnection, create_schema

T = TypeVar("T")
_SPOOLS: dict[str, SQLiteConnection] = {}  # name -> the one connection that holds that spool


def forget(name: str) -> None:
    """Drop the memory spool `name` (what deleting its file is for the SQLite store)."""
    conn = _SPOOLS.pop(name, None)
    if conn is not None:
        conn.close()


class MemoryStore(SQLStore):
    @classmethod
    def from_settings(cls, settings: Any, *, on_commit: Callable[[int], None] | None = None) -> MemoryStore:
        """The `msgspool.stores` entry point: the memory spool of the data directory's name."""
        return cls(str(Path(settings.data_dir).resolve()), commit_batch=settings.commit_batch,
                   crash_limit=settings.crash_limit, on_commit=on_commit)

    def __init__(self, name: str = "default", *, commit_batch: int = 512, crash_limit: int = 0,
                 on_commit: Callable[[int], None] | None = None) -> None:
        super().__init__(commit_batch=commit_batch, crash_limit=crash_limit, on_commit=on_commit)
        self.name = name
        self._conn: SQLiteConnection | None = None
        self._commits = 0

    async def open(self, *, create: bool = True) -> None:
        conn = _SPOOLS.get(self.name)
        if conn is None:
            if not create:
                raise NoSpool(f"no spool in memory named {self.name}")
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False,
                                   factory=SQLiteConnection)
            create_schema(conn)
            _SPOOLS[self.name] = conn
        self._conn = conn

    async def upgrade(self) -> list[str]:
        made = self.name not in _SPOOLS
        await self.open()
        self._conn = None
        return ["new spool in memory"] if made else []

    async def close(self) -> None:
        self._conn = None

    def _write(self, fn: Callable[[Tx], T], durable: bool = True) -> asyncio.Future[T]:
        assert self._conn is not None, "store is not open"
        conn = self._conn
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        conn.execute("BEGIN IMMEDIATE")
        conn.memo = {}
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except Exception as err:  # the step failed: nothing of it stays, as on the other stores
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            future.set_exception(err)
        else:
            self._commits += 1
            self._committed(1)
            future.set_result(result)
        return future

    def _write_item(self, many: Callable[[Tx, list[Any]], list[T]], item: Any,
                    durable: bool = True) -> asyncio.Future[T]:
        return self._write(lambda c: many(c, [item])[0], durable)  # one at a time: nothing to share

    def read(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        assert self._conn is not None, "store is not open"
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(fn(self._conn))
        except Exception as err:
            future.set_exception(err)
        return future

    @property
    def commit_stats(self) -> tuple[int, int]:
        return self._commits, self._commits


if TYPE_CHECKING:  # mypy proves the class plays every role of ports.Store
    _conforms: type[Store] = MemoryStore
