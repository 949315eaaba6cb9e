"""The PostgreSQL message store: several nodes on one spool database (issue 11).

The steps are the SQLite store's (stores/ops.py: plain functions over a transaction, running
the named statements of stores/sql/queries.sql, with PostgreSQL's own spelling of the few that
differ from sql/postgresql_queries.sql); this module is only the engine that runs them on
PostgreSQL: a pool of psycopg 3 connections, versioned migrations, and group commit.

Durability is the same promise: a submission's future resolves only after its COMMIT returned,
and PostgreSQL's COMMIT returns after the WAL is flushed (synchronous_commit on). Transactions
that only record delivery outcomes commit with ``synchronous_commit = off`` (as SQLite's NORMAL):
a crash of the database server may forget the last few hundred milliseconds of them, which costs
a duplicate delivery, never a message.

Group commit: writes that arrive while a commit is in progress share the next transaction. The
batch runs in a helper thread on the writer connection: every statement is a round trip to the
server, during which the thread waits without the GIL, so the event loop keeps serving clients
(the SQLite store runs statements in the loop's thread instead, because there they cost CPU, not
waiting). A failed batch is rolled back and each job is run again alone, so a failure stays its
own; a deadlock or serialization failure between nodes is retried.

The store's API is async (stores/base.py's, shared with SQLite); the driver calls are synchronous
psycopg calls on pooled connections in worker threads. That is deliberate: it lets one body of
steps, written as plain functions over a DB-API-like `Tx`, serve SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool

from msgspool.domain.events import Event
from msgspool.domain.recipient import TRANSITIONS
from msgspool.errors import ConfigError, NoSpool
from msgspool.ports import Store
from msgspool.stores.base import SQLStore, _Job, _resolve, run_jobs
from msgspool.stores.ops import Params, Tx
from msgspool.stores.queries import Queries

log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATIONS = "sql/postgresql"
_SCHEMA_LOCK = 0x6D7367_5370  # pg_advisory_xact_lock key: one node migrates at a time ("msgSp")
_EVENT_ORDER_LOCK = 0x6D7367_5371  # held from a transaction's event ids to its COMMIT (_insert_events)
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
RETRIES = 5
# The LISTEN/NOTIFY channel of the spool's nodes (issue 11.6). Channels are per database, not per
# schema: the spool's schema is in the name, so two spools in one database never hear each other.
CHANNEL = "msgspool:{schema}"
NOTIFY_LIMIT = 7000  # bytes of one payload (PostgreSQL's limit is 8000)


# --------------------------------------------------------------------------------------------
# The dialect: the statements of stores/sql/queries.sql, with PostgreSQL's own blocks of
# sql/postgresql_queries.sql and psycopg's placeholders, translated once at import (queries.py).

QUERIES = Queries("postgresql")


class PgConnection:
    """A psycopg connection as an ops.Tx: `execute` and `executemany` take a statement of
    `QUERIES` (already in psycopg's spelling) and return a cursor."""

    q = QUERIES

    def __init__(self, conn: psycopg.Connection[Any], *, defer_events: bool = False) -> None:
        self.conn = conn
        self.memo: dict[Any, Any] = {}  # ops.Tx.memo: one PgConnection per transaction
        self.events: list[Event] | None = [] if defer_events else None  # ops.Tx.events

    def execute(self, sql: str, parameters: Params = {}, /) -> psycopg.Cursor[Any]:  # noqa: B006 - never mutated
        # Always with parameters (an empty mapping too): psycopg then reads a doubled `%` as one.
        return self.conn.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> psycopg.Cursor[Any]:
        cur = self.conn.cursor()
        cur.executemany(sql, parameters)
        return cur


# --------------------------------------------------------------------------------------------
# Migrations: numbered scripts in sql/postgresql/, each applied once, in order, in one
# transaction under an advisory lock, so nodes that start together migrate once.

def migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("msgspool.stores").joinpath(MIGRATIONS)
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text()))
    return sorted(found)


def transition_guard_sql() -> str:
    """The recipient state table (domain/recipient.py TRANSITIONS) as a trigger, as on SQLite:
    every other change of state is refused, whatever code path attempts it. Made from the table
    at each start, so the two cannot drift."""
    pairs = " OR ".join(f"(OLD.status = '{old}' AND NEW.status = '{new}')"
                        for old, targets in sorted(TRANSITIONS.items()) for new in sorted(targets))
    return (
        "CREATE OR REPLACE FUNCTION msgspool_recipient_transition() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN IF NOT ({pairs}) THEN\n"
        "  RAISE EXCEPTION 'recipient state change not allowed: % -> %', OLD.status, NEW.status;\n"
        "END IF; RETURN NEW; END $$;\n"
        "DROP TRIGGER IF EXISTS recipients_transition ON recipients;\n"
        "CREATE TRIGGER recipients_transition BEFORE UPDATE OF status ON recipients FOR EACH ROW\n"
        "WHEN (NEW.status IS DISTINCT FROM OLD.status) EXECUTE FUNCTION msgspool_recipient_transition();\n")


def upgrade(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the migrations this database lacks; returns their names (none: it was current)."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
                     " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        have = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, script in migrations():
            if version in have:
                continue
            conn.execute(script.encode())  # several statements, no parameters: one simple query
            conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                         (version, name, time.time()))
            applied.append(name)
        conn.execute(transition_guard_sql().encode())
    return applied


def schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT COALESCE(max(version), 0) FROM schema_migrations").fetchone()
    return int(found[0]) if found else 0


def _insert_events(conn: psycopg.Connection[Any], events: list[Event]) -> None:
    """Insert a transaction's events, just before its COMMIT, with ids in commit order.

    Readers of the event log (SSE resumption, the webhook cursor) go on from the last id they
    saw. Were ids taken from the sequence as events are recorded, a transaction of one node could
    take id 5, commit after another node's id 6, and a reader that had seen 6 would skip 5 for
    ever. So a transaction takes its ids only at its end, under a lock it holds through COMMIT
    (PostgreSQL releases it once the commit is visible): a reader can see id N only after every
    id below N is committed or will never be. What this serialises is the last step of the
    nodes' batches: the one statement that takes the lock and inserts a batch's events, then the
    COMMIT."""
    rows = [{"time": e.time, "type": str(e.type), "message_id": e.message_id, "recipient": e.recipient,
             "mailbox": e.mailbox, "folder": e.folder, "detail": json.dumps(e.detail) if e.detail else None}
            for e in events]
    ids = sorted(row[0] for row in conn.execute(INSERT_EVENTS, (_EVENT_ORDER_LOCK,
                                                                json.dumps(rows, separators=(",", ":")))))
    for event, event_id in zip(events, ids, strict=True):
        event.id = event_id


# A transaction's events in one statement, from a JSON array (stores/sql/postgresql_queries.sql says
# why JSON), with the event-order lock: the lock is a materialised CTE joined to the rows, so it is
# taken before the first row reaches the insert and draws an id (the ORDER BY sorts all rows
# first); the ids are drawn in the order of the rows (ORDER BY i), so sorted they are the events'
# order. One round trip fewer under the lock than a SELECT of the lock first.
INSERT_EVENTS = (
    "WITH turn AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s))"
    " INSERT INTO events (time, type, message_id, recipient, mailbox, folder, detail)"
    " SELECT e.time, e.type, e.message_id, e.recipient, e.mailbox, e.folder, e.detail FROM turn,"
    " ROWS FROM (json_to_recordset(CAST(%s AS json)) AS (time double precision, type text, message_id text,"
    " recipient text, mailbox text, folder text, detail text)) WITH ORDINALITY"
    " AS e(time, type, message_id, recipient, mailbox, folder, detail, i) ORDER BY e.i RETURNING id")


def _db_now(conn: Any) -> float:
    """The database server's clock, in Unix seconds: the one clock every node of a spool shares."""
    return float(conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])


# --------------------------------------------------------------------------------------------
# The engine.

class _PgGroupCommit:
    """Group commit on one writer connection; each batch runs in the helper thread."""

    def __init__(self, pool: ConnectionPool[Any], max_batch: int, channel: str) -> None:
        self.pool, self.max_batch, self.channel = pool, max_batch, channel
        self.conn: psycopg.Connection[Any] | None = None
        self.jobs: deque[_Job] = deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="msgspool-pg-commit")
        self.commits = 0
        self.committed_jobs = 0
        self.on_commit: Callable[[int], None] = lambda _writes: None  # called in the commit thread
        self.notices: set[str] = set()  # NOTIFY payloads for the next transaction, each once
        # The writer connection's synchronous_commit, as last set in a committed transaction
        # (None: unknown). A session setting changed only when a batch needs the other one: the
        # delivery process's batches (outcomes only) would each pay a `SET LOCAL` round trip.
        self._sync_commit: bool | None = None
        self._drainer: asyncio.Task[None] | None = None

    def notify(self, payload: str) -> None:
        """Send `payload` on the spool's channel with the next commit. However many writes ask for
        it, a transaction sends each payload once, just before its COMMIT: a NOTIFY takes a
        lock that serialises committing transactions, so it must never come per row (anchors2 §6.5)."""
        self.notices.add(payload)
        if not self.jobs and (self._drainer is None or self._drainer.done()):
            self.submit(lambda tx: None, durable=False)

    def submit(self, fn: Callable[[Tx], T] | None, durable: bool = True,
               many: Callable[[Tx, list[Any]], list[T]] | None = None, item: Any = None) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.jobs.append(_Job(fn, durable, future, many, item))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        return future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.jobs:
            batch = [self.jobs.popleft() for _ in range(min(self.max_batch, len(self.jobs)))]
            notices, self.notices = self.notices, set()
            results, sent = await loop.run_in_executor(self.executor, self._run_batch, batch, notices)
            if not sent:  # every transaction of the batch failed: the next one sends them
                self.notices |= notices
            _resolve(batch, results)

    def _connection(self) -> psycopg.Connection[Any]:
        if self.conn is not None and self.conn.broken:
            self.pool.putconn(self.conn)  # the pool discards a broken connection
            self.conn = None
        if self.conn is None:
            self.conn = self.pool.getconn()
            self._sync_commit = None
        return self.conn

    def _run_batch(self, batch: list[_Job], notices: set[str]) -> tuple[list[tuple[bool, Any]], bool]:
        """(each job's result, whether the notices went out with a commit)."""
        try:
            return self._transaction(batch, notices), True
        except Exception as err:
            if len(batch) == 1:
                return [(False, err)], False
        results: list[tuple[bool, Any]] = []
        sent = False
        for job in batch:  # one failed: each alone, so the failure stays its own
            try:
                results += self._transaction([job], set() if sent else notices)
                sent = True
            except Exception as err:
                results.append((False, err))
        return results, sent

    def _transaction(self, jobs: list[_Job], notices: set[str]) -> list[tuple[bool, Any]]:
        for attempt in range(RETRIES):
            conn = self._connection()
            tx = PgConnection(conn, defer_events=True)
            durable = any(job.durable for job in jobs)
            try:
                with conn.transaction():
                    if self._sync_commit is not durable:  # known only once committed: a rollback undoes a SET
                        conn.execute("SET synchronous_commit = on" if durable else "SET synchronous_commit = off")
                    out = run_jobs(tx, jobs)
                    if tx.events:
                        _insert_events(conn, tx.events)
                    for payload in sorted(notices):
                        conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.005 * (attempt + 1))
                continue
            self._sync_commit = durable
            self.commits += 1
            self.committed_jobs += len(jobs)
            self.on_commit(len(jobs))
            return out
        raise AssertionError("unreachable")

    async def close(self) -> None:
        while self._drainer is not None and not self._drainer.done():
            await self._drainer
        if self.conn is not None:
            self.pool.putconn(self.conn)
            self.conn = None
        self.executor.shutdown()


# The kept counts' deltas (sql/postgresql/0008_counts.sql) summed into one row per key, by one node
# at a time (the others skip, they do not wait): the rows deleted are those of the snapshot, so a
# delta another node writes meanwhile stays for the next time, and the counts never move.
COMPACT_COUNTS = (
    "WITH gone AS (DELETE FROM outbox_count_deltas RETURNING key, n)"
    " INSERT INTO outbox_count_deltas (key, n) SELECT key, sum(n) FROM gone GROUP BY key HAVING sum(n) <> 0",
    "WITH gone AS (DELETE FROM destination_count_deltas RETURNING transport, nexthop, status, n)"
    " INSERT INTO destination_count_deltas (transport, nexthop, status, n)"
    " SELECT transport, nexthop, status, sum(n) FROM gone GROUP BY transport, nexthop, status HAVING sum(n) <> 0")
COMPACT_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('msgspool.counts.' || current_schema()))"
COMPACT_INTERVAL = 5.0  # seconds: a node that reads the counts compacts them first at most this often
COMPACT_WRITES = 4096  # and a node compacts them (in the background) after this many writes of its own


def compact_counts(conn: psycopg.Connection[Any]) -> int:
    """Compact the count deltas in one transaction, unless another node is at it: the delta rows
    folded (0 when skipped)."""
    with conn.transaction():
        row = conn.execute(COMPACT_LOCK).fetchone()
        if not row or not row[0]:
            return 0
        folded = 0
        for sql in COMPACT_COUNTS:
            folded += conn.execute(sql).rowcount
        return folded


class PostgresStore(SQLStore):
    """The store on PostgreSQL (`store = "postgresql"`, `database_url`). Same steps and API as
    the SQLite store (stores/base.py); only how they reach the database differs."""

    READERS = 4
    shared = True  # nodes on several machines: only their leases tell who lives

    @classmethod
    def from_settings(cls, settings: Any, *, on_commit: Callable[[int], None] | None = None) -> PostgresStore:
        if not settings.database_url:
            raise ConfigError('store = "postgresql" needs database_url (e.g. postgresql://user@host/db)')
        return cls(settings.database_url, commit_batch=settings.commit_batch, crash_limit=settings.crash_limit,
                   on_commit=on_commit)

    def __init__(self, url: str, *, commit_batch: int = 512, crash_limit: int = 0,
                 on_commit: Callable[[int], None] | None = None) -> None:
        super().__init__(commit_batch=commit_batch, crash_limit=crash_limit, on_commit=on_commit)
        self.url = url
        self._pool: ConnectionPool[Any] | None = None
        self._pg_writer: _PgGroupCommit | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._beats: ThreadPoolExecutor | None = None
        self._subscribers: list[Callable[[str, list[str]], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._tag = secrets.token_hex(4)  # this store's own notices come back to it: skipped
        self._channel = ""
        self.clock: Callable[[], float] = time.time  # this node's clock (the leases use the database's)
        self._compacted_at = -COMPACT_INTERVAL
        self.compact_every = COMPACT_WRITES
        self._writes_since_fold = 0
        self._folding = False

    async def open(self, *, create: bool = True) -> None:
        pool: ConnectionPool[Any] = ConnectionPool(
            self.url, min_size=2, max_size=self.READERS + 3, open=False, name="msgspool",
            kwargs={"autocommit": True, "application_name": "msgspool"})

        def prepare() -> tuple[list[str], str]:
            """Migrations applied, and the spool's schema (its channel's name): off the loop."""
            pool.open(True, 30.0)
            with pool.connection() as conn:
                if not create and schema_version(conn) == 0:
                    raise NoSpool(f"no spool in the database {conn.info.dbname!r} (msgspool db upgrade makes one)")
                names = upgrade(conn)
                row = conn.execute("SELECT current_schema()").fetchone()
            return names, row[0] if row else "public"

        try:
            names, schema = await asyncio.to_thread(prepare)
        except BaseException:
            await asyncio.to_thread(pool.close)
            raise
        if names:
            log.info("database schema upgraded: %s", ", ".join(names))
        self._pool = pool
        self._channel = CHANNEL.format(schema=schema)
        self._pg_writer = _PgGroupCommit(pool, self.commit_batch, self._channel)
        self._pg_writer.on_commit = self._committed
        self._readers = ThreadPoolExecutor(self.READERS, thread_name_prefix="msgspool-pg-read")
        self._beats = ThreadPoolExecutor(1, thread_name_prefix="msgspool-pg-beat")
        if self._subscribers:
            self._start_listening()

    async def upgrade(self) -> list[str]:
        def run() -> list[str]:
            with psycopg.connect(self.url, autocommit=True) as conn:
                return upgrade(conn)

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if self._pg_writer is not None:
            await self._pg_writer.close()
        for executor in (self._readers, self._beats):
            if executor is not None:
                executor.shutdown()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
        self._pg_writer = self._readers = self._beats = self._pool = None

    def _write(self, fn: Callable[[Tx], T], durable: bool = True) -> asyncio.Future[T]:
        assert self._pg_writer is not None, "store is not open"
        return self._pg_writer.submit(fn, durable)

    def _write_item(self, many: Callable[[Tx, list[Any]], list[T]], item: Any,
                    durable: bool = True) -> asyncio.Future[T]:
        assert self._pg_writer is not None, "store is not open"
        return self._pg_writer.submit(None, durable, many, item)

    def _beat(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        """A heartbeat on a connection and thread of its own, never queued behind the group
        commit: a batch waiting on another node's locks (or retried after a deadlock, which
        PostgreSQL finds after deadlock_timeout) must not keep a live node from renewing its
        lease. Seen in the nodes bench: a beat took 1.6 s of a 3 s lease through the writer."""
        assert self._pool is not None and self._beats is not None, "store is not open"
        pool = self._pool

        def run() -> T:
            with pool.connection() as conn, conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = off")  # a lost renewal only shortens it
                return fn(PgConnection(conn))

        return asyncio.wrap_future(self._beats.submit(run))

    def read(self, fn: Callable[[Tx], T]) -> asyncio.Future[T]:
        assert self._pool is not None and self._readers is not None, "store is not open"
        pool = self._pool

        def run() -> T:
            # One snapshot for the whole read (READ COMMITTED would take one per statement: a
            # message read before a settlement committed, its recipients after it).
            with pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return fn(PgConnection(conn))

        return asyncio.wrap_future(self._readers.submit(run))

    # -- The kept counts ----------------------------------------------------------------------
    # A count is the sum of its deltas (one row per statement that changed it): any node that
    # reads them folds them first, at most every COMPACT_INTERVAL; every node folds them after
    # COMPACT_WRITES writes of its own, and at housekeeping; so the sum stays short. Off the
    # writer: a fold never holds up the group commit.

    async def compact_counts(self) -> int:
        assert self._pool is not None and self._readers is not None, "store is not open"
        pool = self._pool
        self._compacted_at = time.monotonic()

        def run() -> int:
            with pool.connection() as conn:
                return compact_counts(conn)

        return await asyncio.wrap_future(self._readers.submit(run))

    def _committed(self, writes: int) -> None:
        """In the commit thread: after `compact_every` writes, fold the deltas on a reader thread,
        so that a spool whose counts nobody reads (no `status`, no scrape) keeps its sums short."""
        super()._committed(writes)
        self._writes_since_fold += writes
        if self._writes_since_fold < self.compact_every or self._folding:
            return
        pool, readers = self._pool, self._readers
        if pool is None or readers is None:
            return
        self._writes_since_fold, self._folding = 0, True

        def run() -> None:
            try:
                with pool.connection() as conn:
                    compact_counts(conn)
            except psycopg.Error as err:
                log.warning("count deltas not compacted: %s", err)
            finally:
                self._folding = False

        readers.submit(run)

    async def _fold_now_and_then(self) -> None:
        if time.monotonic() - self._compacted_at >= COMPACT_INTERVAL:
            try:
                await self.compact_counts()
            except psycopg.Error as err:  # the sum is right either way, only longer
                log.warning("count deltas not compacted: %s", err)

    async def counts(self) -> dict[str, int]:
        await self._fold_now_and_then()
        return await super().counts()

    async def destination_counts(self) -> list[tuple[str, str, str, int]]:
        await self._fold_now_and_then()
        return await super().destination_counts()

    async def purge(self, sent_before: float, events_before: float) -> int:
        purged = await super().purge(sent_before, events_before)
        await self._fold_now_and_then()
        return purged

    # -- Leases on the database's clock -----------------------------------------------------
    # Nodes on several machines judge each other's leases: were each to use its own clock, one
    # running behind would see live nodes expire early and take their work. So a time a lease is
    # set or judged by is moved onto the database's clock: `now` (this node's clock, as callers
    # pass it) plus how far the database's clock is from this node's, read in the same
    # transaction. For a caller asking about the present that is the database's time; a caller
    # that asks about a moment later (a test, a timer) keeps its distance from the present.

    def _lease_clock(self, tx: Tx, now: float) -> float:
        return now + (_db_now(tx) - self.clock())

    # -- Notifier: wakeups between the nodes (issue 11.6) -------------------------------------

    def publish(self, kind: str, ids: Sequence[str] = ()) -> None:
        """Tell the other nodes `kind` ("due": work became due, look now; "cancel": drop these
        messages' jobs from memory), with the next commit; a long list goes in several notices."""
        if self._pg_writer is None:
            return
        head = f"{kind} {self._tag}"
        chunk: list[str] = []
        for message_id in ids:
            if len(head) + sum(len(i) + 1 for i in chunk) + len(message_id) + 1 > NOTIFY_LIMIT:
                self._pg_writer.notify(" ".join([head, *chunk]))
                chunk = []
            chunk.append(message_id)
        if chunk or not ids:
            self._pg_writer.notify(" ".join([head, *chunk]))

    def subscribe(self, callback: Callable[[str, list[str]], None]) -> None:
        """Call `callback(kind, ids)` in the event loop for each notice of another node."""
        self._subscribers.append(callback)
        if self._pool is not None and self._listener is None:
            self._start_listening()

    def _start_listening(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="msgspool-pg-listen")

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, for as long as the store is open. After a
        reconnection the subscribers hear "due" once: a notice lost meanwhile costs one look at
        the store, and the poll interval bounds the loss in any case."""
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    delay = 0.5
                    self._hear("due", [])
                    async for notice in conn.notifies():
                        kind, tag, *ids = notice.payload.split(" ")
                        if tag != self._tag:
                            self._hear(kind, ids)
            except psycopg.Error as err:
                log.warning("listening for other nodes failed (%s); again in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _hear(self, kind: str, ids: list[str]) -> None:
        for callback in list(self._subscribers):
            try:
                callback(kind, ids)
            except Exception:  # one subscriber's bug must not stop the others hearing
                log.exception("a subscriber failed on the notice %r", kind)

    @property
    def commit_stats(self) -> tuple[int, int]:
        w = self._pg_writer
        return (w.commits, w.committed_jobs) if w else (0, 0)


if TYPE_CHECKING:  # mypy proves the class plays every role of ports.Store
    _conforms: type[Store] = PostgresStore
    _tx: type[Tx] = PgConnection
