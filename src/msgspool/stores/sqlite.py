"""The SQLite message store: the embedded default, one file in the data directory.

Durability: WAL with ``synchronous=FULL`` for every transaction that accepts a message, so a
message is on disk before anyone is told it was accepted. Speed comes from **group commit**: all
writes that arrive while the previous commit is in progress share the next one (one fsync for a
whole batch), driven from the event loop (`_GroupCommit`); one bad write fails alone. Transactions
that only record delivery outcomes are
committed with ``synchronous=NORMAL``: in WAL mode they still survive a crash of the process; only
a power loss could forget them, and the price of that is a duplicate delivery, never a lost
message. The next FULL commit flushes them anyway.

Reads go through a second thread with its own connection, so they never wait behind a commit.
This module is SQLite's engine and schema only: what each step writes is stores/ops.py's, over
a connection (`SQLiteConnection`) that carries the statements of stores/sql/queries.sql; the
async API is stores/base.py's `SQLStore`.
The CLI opens a `SQLiteStore` of its own around each command (`load_store`), so it works with the
daemon down, and on any store.

A write that fails for lack of space raises `StorageFull` (see `storage_error`): SQLite rolled
it back whole, so nothing of it is stored and the same write succeeds once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from msgspool import spooldir
from msgspool.domain.events import Event
from msgspool.domain.recipient import TRANSITIONS
from msgspool.errors import NoSpool, StorageFull
from msgspool.ports import Store
from msgspool.stores.base import SQLStore, _Job, _resolve, run_jobs
from msgspool.stores.ops import Tx
from msgspool.stores.queries import Queries

T = TypeVar("T")
DB_NAME = "spool.db"
SCHEMA_VERSION = 18  # the schema script is idempotent: an older spool gets what is new in it


# SQLite's primary result codes that may mean "no room": SQLITE_FULL always; SQLITE_IOERR (a WAL
# or -shm file that could not grow, an fsync refused) only when the file system is nearly full.
_SQLITE_FULL, _SQLITE_IOERR = 13, 10
NEARLY_FULL = 1 << 20  # bytes free under which an I/O error is taken for a full file system


def storage_error(err: BaseException, directory: Path) -> BaseException:
    """`err` as `StorageFull` when it means the spool's file system has no room, else `err`."""
    if isinstance(err, OSError) and err.errno in spooldir.NO_SPACE_ERRNOS:
        return _storage_full(err)
    if not isinstance(err, sqlite3.Error):
        return err
    code = getattr(err, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL or (primary is None and "disk is full" in str(err)):
        return _storage_full(err)
    if primary == _SQLITE_IOERR and spooldir.free_bytes(directory) < NEARLY_FULL:
        return _storage_full(err)
    return err


@contextlib.contextmanager
def space_errors(directory: Path) -> Iterator[None]:
    """Raise a failure for lack of space on `directory`'s file system as `StorageFull`."""
    try:
        yield
    except (OSError, sqlite3.Error) as err:
        full = storage_error(err, directory)
        if full is err:
            raise
        raise full from err


def _storage_full(err: BaseException) -> StorageFull:
    full = StorageFull(str(err))
    full.__cause__ = err
    return full


class SQLiteConnection(sqlite3.Connection):
    """A connection that is an ops.Tx: the statements of stores/sql/queries.sql as `q`, run with
    their named parameters passed by position (Queries.positional: one dict lookup and an
    itemgetter per statement; sqlite3 binds a tuple faster than it looks names up in a mapping).
    Any other statement (the schema's, a test's) goes to sqlite3 as it is."""

    q = Queries("sqlite")
    memo: dict[Any, Any]  # reset at each BEGIN (ops.Tx.memo)
    events: list[Event] | None = None  # inserted at once: SQLite has one writer at a time
    _positional = q.positional
    _execute = sqlite3.Connection.execute
    _executemany = sqlite3.Connection.executemany

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        order = self._positional.get(sql)
        return self._execute(sql, parameters if order is None else order(parameters))

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        order = self._positional.get(sql)
        return self._executemany(sql, parameters if order is None else map(order, parameters))


def connect(path: Path, *, readonly: bool = False) -> SQLiteConnection:
    """A connection with the pragmas every user of the spool needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False, factory=SQLiteConnection)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=SQLiteConnection)
    conn.memo = {}
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


# Columns added after version 1; a spool made by an older msgspool gets them on open.
_ADDED_COLUMNS = {
    "recipients": ("notify TEXT", "orcpt TEXT", "report TEXT", "source_address TEXT",
                   "priority INTEGER NOT NULL DEFAULT 0", "warn_at REAL", "owner TEXT"),
    "messages": ("ret TEXT", "envid TEXT", "read INTEGER NOT NULL DEFAULT 0", "mdn TEXT",
                 "preprocessed INTEGER NOT NULL DEFAULT 0", "source_content_id INTEGER", "source_sender TEXT",
                 "crashes INTEGER NOT NULL DEFAULT 0", "max_attempts INTEGER", "resend_of TEXT",
                 "copy_of TEXT", "copy_for TEXT", "subject TEXT")}
# What the rows of an older spool hold in a column added to it: mail it submitted was read by its writer.
_BACKFILL = {"read": "UPDATE messages SET read = 1 WHERE folder IN ('outbox', 'sent')"}


def create_schema(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    added: set[str] = set()
    for table, columns in _ADDED_COLUMNS.items():  # first: the script indexes some of them
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            name = column.split()[0]
            if have and name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                if name in _BACKFILL:
                    conn.execute(_BACKFILL[name])
                added.add(f"{table}.{column.split()[0]}")
    if "recipients.priority" in added:  # waiting recipients of urgent (non-urgent) mail keep their class
        conn.execute("UPDATE recipients SET priority = (SELECT CASE WHEN m.priority > 0 THEN 1 ELSE -1 END"
                     " FROM messages m WHERE m.id = recipients.message_id) WHERE status IN ('queued','deferred','held')"
                     " AND message_id IN (SELECT id FROM messages WHERE priority != 0)")
    counted = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_counts'").fetchone() is not None
    conn.executescript(resources.files("msgspool.stores").joinpath("sql/sqlite.sql").read_text())
    conn.executescript(transition_guard_sql())
    if not counted:
        backfill_counts(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def backfill_counts(conn: sqlite3.Connection) -> None:
    """The kept counts (sql/sqlite.sql outbox_counts, destination_counts) of a spool made before
    they were kept, computed from its rows once (schema 17), in one transaction: the triggers are
    in place already, so a write by another process meanwhile is counted either way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE outbox_counts SET n = 0")
        conn.execute("DELETE FROM destination_counts")
        conn.execute("UPDATE outbox_counts SET n = (SELECT count(*) FROM messages WHERE folder = 'outbox')"
                     " WHERE key = 'messages'")
        conn.execute("INSERT INTO outbox_counts (key, n) SELECT r.status, count(*) FROM recipients r"
                     " JOIN messages m ON m.id = r.message_id WHERE m.folder = 'outbox' GROUP BY r.status"
                     " ON CONFLICT (key) DO UPDATE SET n = excluded.n")
        conn.execute("INSERT INTO destination_counts (transport, nexthop, status, n)"
                     " SELECT coalesce(transport, ''), coalesce(nexthop, ''), status, count(*) FROM recipients"
                     " WHERE status IN ('queued', 'active', 'deferred', 'held')"
                     " GROUP BY coalesce(transport, ''), coalesce(nexthop, ''), status")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def transition_guard_sql() -> str:
    """A trigger that refuses every change of a recipient's state that the domain's table
    (domain/recipient.py TRANSITIONS) does not allow: the table is enforced on every write, by
    whatever code path, instead of being documentation (issue 11.1). Made from the table itself,
    so the two cannot drift; recreated with each schema version."""
    pairs = " OR ".join(f"(OLD.status = '{old}' AND NEW.status = '{new}')"
                        for old, targets in sorted(TRANSITIONS.items()) for new in sorted(targets))
    return ("DROP TRIGGER IF EXISTS recipients_transition;\n"
            "CREATE TRIGGER recipients_transition BEFORE UPDATE OF status ON recipients\n"
            f"WHEN NEW.status <> OLD.status AND NOT ({pairs})\n"
            "BEGIN SELECT RAISE(ABORT, 'recipient state change not allowed'); END;\n")


# --------------------------------------------------------------------------------------------
# The engine: group commit driven from the event loop, and a reader thread.


class _GroupCommit:
    """Group commit: every write that arrives while a commit is in progress joins the next one,
    so a burst of messages shares one fsync.

    The statements run in the event loop's thread; only BEGIN (which may wait for another
    process's write lock) and COMMIT (the fsync) run in a helper thread. Measured: with all of it
    in a writer thread, each of the ~6 statements per message released and re-took the GIL
    against the busy event loop, and the writer spent two thirds of its time waiting for the GIL,
    holding every client's 250 for ~18 ms. Here the loop pays the statements' CPU it would pay
    anyway, and two GIL handoffs per batch instead of a dozen per message."""

    def __init__(self, conn: SQLiteConnection, max_batch: int, directory: Path) -> None:
        self.conn, self.max_batch, self.directory = conn, max_batch, directory
        self.jobs: deque[_Job] = deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="msgspool-commit")
        self.synchronous_full = True
        self.commits = 0
        self.committed_jobs = 0
        self.on_commit: Callable[[int], None] = lambda _writes: None
        self._drainer: asyncio.Task[None] | None = None

    def submit(self, fn: Callable[[Tx], T] | None, durable: bool = True,
               many: Callable[[Tx, list[Any]], list[T]] | None = None, item: Any = None) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.jobs.append(_Job(fn, durable, future, many, item))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return future

    async def _drain(self) -> None:
        while self.jobs:
            began = await self._begin_for(list(self.jobs))
            batch = [self.jobs.popleft() for _ in range(min(self.max_batch, len(self.jobs)))]
            results = await self._run(batch) if began is None else [(False, began)] * len(batch)
            _resolve(batch, [(ok, value if ok else storage_error(value, self.directory)) for ok, value in results])

    async def _begin_for(self, jobs: list[_Job]) -> Exception | None:
        """Open the transaction (in the helper thread: it may wait for another process's lock)."""
        try:
            await self._in_thread(self._begin, any(job.durable for job in jobs))
        except Exception as err:  # e.g. still locked after busy_timeout: the batch fails, the writer goes on
            return err
        return None

    async def _run(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        """Run a batch inside the open transaction and commit it; should one job fail, the batch is
        rolled back and each job runs again in a transaction of its own, so the failure stays its
        own (a SAVEPOINT per job would also isolate it, at two more statements per job)."""
        try:
            out = run_jobs(self.conn, batch)
            await self._in_thread(self.conn.execute, "COMMIT")
        except Exception as err:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if len(batch) == 1:
                return [(False, err)]
            results: list[tuple[bool, Any]] = []
            for job in batch:
                began = await self._begin_for([job])
                results.extend(await self._run([job]) if began is None else [(False, began)])
            return results
        self.commits += 1
        self.committed_jobs += len(batch)
        self.on_commit(len(batch))
        return out

    def _begin(self, durable: bool) -> None:
        if durable != self.synchronous_full:
            self.conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self.synchronous_full = durable
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.memo = {}  # what this transaction read once for its batch (ops.Tx.memo)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def close(self) -> None:
        while self._drainer is not None and not self._drainer.done():
            await self._drainer
        self.executor.shutdown()
        self.conn.close()


_STOP = object()


class _Reader(threading.Thread):
    """Runs read jobs on its own connection, so reads never wait behind a commit."""

    def __init__(self, conn: SQLiteConnection, loop: asyncio.AbstractEventLoop, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.conn, self.loop = conn, loop
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def submit(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.loop.create_future()
        self.jobs.put(_Job(fn, False, future))
        return future

    def stop(self) -> None:
        self.jobs.put(_STOP)
        self.join()

    def run(self) -> None:
        while (job := self.jobs.get()) is not _STOP:
            try:
                # One snapshot for the whole read: a message and its recipients as of one commit,
                # never the message before a settlement and its recipients after it.
                self.conn.execute("BEGIN")
                try:
                    result: tuple[bool, Any] = (True, job.fn(self.conn))
                finally:
                    self.conn.execute("COMMIT")
            except Exception as err:  # handed to the awaiting coroutine
                result = (False, err)
            self.loop.call_soon_threadsafe(_resolve, [job], [result])
        self.conn.close()


class SQLiteStore(SQLStore):
    """The store in one SQLite file (the default). All methods are coroutines; writes share commits."""

    shared = False  # one file on this machine: its delivery lock covers every node of the spool

    @classmethod
    def from_settings(cls, settings: Any, *, on_commit: Callable[[int], None] | None = None) -> SQLiteStore:
        """The `msgspool.stores` entry point: `spool.db` in the data directory."""
        return cls(Path(settings.data_dir) / DB_NAME, commit_batch=settings.commit_batch,
                   crash_limit=settings.crash_limit, on_commit=on_commit)

    def __init__(self, path: Path, *, commit_batch: int = 512, crash_limit: int = 0,
                 on_commit: Callable[[int], None] | None = None) -> None:
        super().__init__(commit_batch=commit_batch, crash_limit=crash_limit, on_commit=on_commit)
        self.path = path
        self._writer: _GroupCommit | None = None
        self._reader: _Reader | None = None

    async def open(self, *, create: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if not create and not self.path.exists():
            raise NoSpool(f"no spool at {self.path.parent}")
        wconn, _before = self._make()
        self._writer = _GroupCommit(wconn, self.commit_batch, self.path.parent)
        self._writer.on_commit = self._committed
        self._reader = _Reader(connect(self.path), loop, name="msgspool-reader")
        self._reader.start()

    def _make(self) -> tuple[SQLiteConnection, int]:
        """The spool file (made 0600 if missing; SQLite gives -wal and -shm the database's mode)
        with this version's schema, and the schema version it had before."""
        with space_errors(self.path.parent):
            spooldir.create(self.path.parent)
            spooldir.create_file(self.path)
            conn = connect(self.path)
            before: int = conn.execute("PRAGMA user_version").fetchone()[0]
            create_schema(conn)
        return conn, before

    async def upgrade(self) -> list[str]:
        conn, before = await asyncio.to_thread(self._make)
        conn.close()
        if before >= SCHEMA_VERSION:
            return []
        return [f"schema {before} -> {SCHEMA_VERSION}" if before else f"new spool, schema {SCHEMA_VERSION}"]

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.stop)
        self._writer = self._reader = None

    def _write(self, fn: Callable[[Tx], T], durable: bool = True) -> asyncio.Future[T]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(fn, durable)

    def _write_item(self, many: Callable[[Tx, list[Any]], list[T]], item: Any,
                    durable: bool = True) -> asyncio.Future[T]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(None, durable, many, item)

    def read(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        assert self._reader is not None, "store is not open"
        return self._reader.submit(fn)

    @property
    def commit_stats(self) -> tuple[int, int]:
        w = self._writer
        return (w.commits, w.committed_jobs) if w else (0, 0)


if TYPE_CHECKING:  # mypy proves the class plays every role of ports.Store
    _conforms: type[Store] = SQLiteStore
    _tx: type[Tx] = SQLiteConnection
