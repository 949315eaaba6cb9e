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
The CLI opens a `SQLiteStore` of its own around each command (`load_store`), so it works with the
daemon down, and on any store.

A write that fails for lack of space raises `StorageFull` (see `storage_error`): SQLite rolled
it back whole, so nothing of it is stored and the same write succeeds once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from msgspool import spooldir
from msgspool.domain.dsn import MessageDSN, RecipientDSN, Ret, notify_text, orcpt_text, recipient_dsn, report_action
from msgspool.domain.events import Event, EventType
from msgspool.domain.hooks import Draft, Hold, HookRecord, Preprocessed, Reject
from msgspool.domain.ids import new_id
from msgspool.domain.mdn import Disposition
from msgspool.domain.message import (
    INBOX,
    OUTBOX,
    SENT,
    Message,
    MessageInfo,
    PendingReport,
    ReadReceipt,
    Recipient,
    Settlement,
)
from msgspool.domain.outcome import Reply
from msgspool.domain.recipient import TRANSITIONS, RecipientType, Status
from msgspool.domain.tokens import NewToken, Token
from msgspool.domain.users import User
from msgspool.errors import NoSpool, StorageFull
from msgspool.ports import Store
from msgspool.stores.sqlite_tokens import any_token, find_token, list_tokens, op_create_token, op_revoke_token
from msgspool.stores.sqlite_users import find_user, list_users, op_add_user, op_delete_user

T = TypeVar("T")
DB_NAME = "spool.db"
CHUNK = 5000  # rows one bulk change (flush, a released backlog) touches per transaction
NODE_RETENTION = 3600.0  # seconds a dead node's row stays (for `status`) once its work is rescued
SCHEMA_VERSION = 10  # the schema script is idempotent: an older spool gets what is new in it
# Priority classes, urgent first: the order refill claims in (recipients.priority holds the class).
PRIORITY_CLASSES = (1, 0, -1)
_PENDING_SQL = "('queued','active','deferred','held')"
_STATUS_EVENT = {
    Status.DELIVERED: EventType.DELIVERED,
    Status.DEFERRED: EventType.DEFERRED,
    Status.FAILED: EventType.FAILED,
    Status.EXPIRED: EventType.EXPIRED,
    Status.HELD: EventType.HELD,
}


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


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every user of the spool needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
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
                 "crashes INTEGER NOT NULL DEFAULT 0", "max_attempts INTEGER")}
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
    conn.executescript(resources.files("msgspool.stores").joinpath("sql/sqlite.sql").read_text())
    conn.executescript(transition_guard_sql())
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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


def priority_class(priority: int) -> int:
    """1 urgent, 0 normal, -1 non-urgent (MAPI PR_PRIORITY's three values; others fold into them)."""
    return (priority > 0) - (priority < 0)


# --------------------------------------------------------------------------------------------
# The statements. Every function takes a connection that is already inside a transaction (the
# writer's batch) and returns plain data.


def _insert_event(conn: sqlite3.Connection, event: Event) -> Event:
    event.id = conn.execute(
        "INSERT INTO events (time, type, message_id, recipient, mailbox, folder, detail)"
        " VALUES (?,?,?,?,?,?,?) RETURNING id",
        (event.time, str(event.type), event.message_id, event.recipient, event.mailbox, event.folder,
         json.dumps(event.detail) if event.detail else None),
    ).fetchone()[0]
    return event


def _insert_content(conn: sqlite3.Connection, data: bytes) -> int:
    content_id: int = conn.execute("INSERT INTO contents (data) VALUES (?) RETURNING id", (data,)).fetchone()[0]
    return content_id


def _insert_message(conn: sqlite3.Connection, msg: Message, content_id: int, *, read: bool) -> None:
    conn.execute(
        "INSERT INTO messages (id, mailbox, folder, sender, size, submitted_at, content_id,"
        " headers_prefix, message_class, priority, deliver_after, expires_at, delete_after_submit,"
        " held, origin, meta, ret, envid, read, max_attempts, flags)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (msg.id, msg.mailbox, msg.folder, msg.sender, msg.size, msg.submitted_at, content_id,
         msg.headers_prefix or None, msg.message_class, msg.priority, msg.deliver_after, msg.expires_at,
         int(msg.delete_after_submit), int(msg.held), msg.origin, json.dumps(msg.meta) if msg.meta else None,
         msg.dsn.ret if msg.dsn else None, msg.dsn.envid if msg.dsn else None, int(read), msg.max_attempts,
         " ".join(msg.flags)),
    )


def _recipient_row(msg: Message, r: Recipient, owner: str | None) -> tuple[Any, ...]:
    reply = r.last_reply
    return (msg.id, r.index, r.address, r.addrtype, str(r.type), r.transport, r.nexthop, str(r.status),
            r.attempts, r.next_attempt_at, r.last_attempt_at,
            reply.code if reply else None, reply.enhanced if reply else None, reply.text if reply else None,
            notify_text(r.dsn), orcpt_text(r.dsn), priority_class(msg.priority), r.report_owed,
            owner if r.status is Status.ACTIVE else None)


_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, addrtype, type, transport, nexthop, status,"
    " attempts, next_attempt_at, last_attempt_at, reply_code, reply_enhanced, reply_text, notify, orcpt,"
    " priority, report, owner) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")


def op_submit(conn: sqlite3.Connection, msg: Message, copies: Sequence[Message],
              owner: str | None = None) -> list[Event]:
    """Store a submission: the outbox message with its recipients, and the local copies filed
    straight into their mailboxes (tightly coupled delivery) — one atomic step. Recipients
    committed `active` are handed to the delivery node `owner` in the same step, while that node
    is live: a hand-over to a node whose lease ran out is refused — its recipients are committed
    queued, due now, for whichever node claims them, and set so in `msg` (the caller must not
    hand it on: that node may no longer deliver)."""
    handed = [r for r in msg.recipients if r.status is Status.ACTIVE]
    if handed and owner is not None and not node_live(conn, owner, msg.submitted_at):
        for r in handed:
            r.status = Status.QUEUED
    content_id = _insert_content(conn, msg.content)
    _insert_message(conn, msg, content_id, read=True)  # its writer has read it (MAPI: Sent Items show read)
    conn.executemany(_INSERT_RECIPIENT, [_recipient_row(msg, r, owner) for r in msg.recipients])
    if token := msg.meta.get("http_token"):
        _insert_history(conn, msg.id, msg.submitted_at, "submission",
                        [HookRecord("", "submitted", f"over HTTP with token {token}")])
    if user := msg.meta.get("smtp_auth_user"):
        _insert_history(conn, msg.id, msg.submitted_at, "submission",
                        [HookRecord("", "submitted", f"over SMTP by authenticated user {user}")])
    events = [_insert_event(conn, Event(EventType.SUBMITTED, msg.id, msg.submitted_at,
                                        detail={"sender": msg.sender, "size": msg.size,
                                                "origin": msg.origin}))]
    for r in msg.recipients:
        if r.status in _STATUS_EVENT and r.status is not Status.DEFERRED:
            events.append(_insert_event(conn, _recipient_event(msg.id, r.address, r.status, r.last_reply,
                                                               msg.submitted_at, r.transport)))
    events += [_file(conn, copy, content_id) for copy in copies]
    if not any(r.status.pending for r in msg.recipients):
        events += _finish_if_done(conn, msg.id, msg.submitted_at)
    return events


def _file(conn: sqlite3.Connection, copy: Message, content_id: int) -> Event:
    """File a local copy (sharing the submission's content row) into its mailbox's receive folder."""
    conn.execute("INSERT OR IGNORE INTO mailboxes (address, created_at) VALUES (?,?)",
                 (copy.mailbox, copy.submitted_at))
    copy.folder = copy.folder or receive_folder(conn, copy.mailbox, copy.message_class)
    _insert_message(conn, copy, content_id, read="\\Seen" in copy.flags)
    return _insert_event(conn, Event(EventType.NEW_MAIL, copy.id, copy.submitted_at, mailbox=copy.mailbox,
                                     folder=copy.folder,
                                     detail={"sender": copy.sender, "message_class": copy.message_class}))


def _file_copy(conn: sqlite3.Connection, message_id: str, copy: Message) -> Event:
    if copy.own_content:
        content_id = _insert_content(conn, copy.content)
    else:
        content_id = conn.execute("SELECT content_id FROM messages WHERE id = ?", (message_id,)).fetchone()[0]
    assert content_id is not None
    return _file(conn, copy, content_id)


def receive_folder(conn: sqlite3.Connection, mailbox: str, message_class: str) -> str:
    """MAPI GetReceiveFolder: the folder of the longest matching class prefix; Inbox by default."""
    rows = conn.execute("SELECT message_class, folder FROM receive_folders WHERE mailbox = ?",
                        (mailbox,)).fetchall()
    best, folder = -1, INBOX
    wanted = message_class.upper()
    for cls, fld in rows:
        cls = cls.upper()
        if (wanted == cls or wanted.startswith(cls + ".") or cls == "") and len(cls) > best:
            best, folder = len(cls), fld
    return str(folder)


def _recipient_event(message_id: str, address: str, status: Status, reply: Reply | None, now: float,
                     transport: str | None, remote: str | None = None) -> Event:
    detail: dict[str, Any] = {"transport": transport}
    if reply is not None:
        detail["reply"] = reply.line()
        detail["dsn"] = reply.dsn
    if remote:
        detail["relay"] = remote
    return Event(_STATUS_EVENT[status], message_id, now, recipient=address, detail=detail)


def _finish_if_done(conn: sqlite3.Connection, message_id: str, now: float) -> list[Event]:
    """MAPI FinishedMsg: once every recipient is final, the message leaves the outbox — to Sent
    Items, or deleted when the submitter asked for delete-after-submit."""
    row = conn.execute(
        "SELECT delete_after_submit FROM messages WHERE id = ? AND folder = ? AND NOT EXISTS"
        f" (SELECT 1 FROM recipients WHERE message_id = ? AND status IN {_PENDING_SQL})",
        (message_id, OUTBOX, message_id)).fetchone()
    if row is None:
        return []
    if row[0] and not _reports_owed(conn, message_id):
        _delete_messages(conn, [message_id])
    else:  # delete-after-submit waits for the reports it owes: they quote the message
        conn.execute("UPDATE messages SET folder = ?, finished_at = ? WHERE id = ?", (SENT, now, message_id))
    return []


def _reports_owed(conn: sqlite3.Connection, message_id: str) -> bool:
    return conn.execute("SELECT 1 FROM recipients WHERE message_id = ? AND report IS NOT NULL LIMIT 1",
                        (message_id,)).fetchone() is not None


def _delete_messages(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    for message_id in ids:
        row = conn.execute("SELECT content_id, source_content_id FROM messages WHERE id = ?",
                           (message_id,)).fetchone()
        conn.execute("DELETE FROM recipients WHERE message_id = ?", (message_id,))
        conn.execute("DELETE FROM history WHERE message_id = ?", (message_id,))
        conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        for content_id in row or ():
            if content_id is not None:
                _drop_content_if_unused(conn, content_id)


def _drop_content_if_unused(conn: sqlite3.Connection, content_id: int) -> None:
    conn.execute("DELETE FROM contents WHERE id = ? AND NOT EXISTS (SELECT 1 FROM messages"
                 " WHERE content_id = ? OR source_content_id = ?)", (content_id, content_id, content_id))


def op_claim(conn: sqlite3.Connection, now: float, limit: int, whole_messages: bool = False,
             owner: str | None = None) -> list[Message]:
    """Claim due recipients (queued or deferred, next_attempt_at passed) for the delivery run
    `owner`: mark them active and owned by it, and return their messages with only the claimed
    recipients, urgent ones first. Bounded by `limit` rows; each priority class is one range of
    `recipients_due_by_priority`, oldest due first, so an urgent retry is claimed before a backlog
    of a million normal ones without reading them.

    With `whole_messages` (outbound hooks run in this process), a message the hooks have not seen
    yet comes with every waiting recipient it has, past `limit`: the hooks decide once for the
    whole message (a reject, a rewrite, a split covers all its recipients), and then it is marked
    preprocessed. Preprocessed mail is claimed as before, a row at a time by the index.

    A node whose lease ran out claims nothing (its heartbeat will tell it it is dead)."""
    if owner is not None and not node_live(conn, owner, now):
        return []
    rows: list[Any] = []
    for priority in PRIORITY_CLASSES:
        if len(rows) >= limit:
            break
        rows += conn.execute(CLAIM_SQL, {"owner": owner, "priority": priority, "now": now,
                                          "limit": limit - len(rows)}).fetchall()
    by_message: dict[str, list[Recipient]] = {}
    for row in rows:
        by_message.setdefault(row[0], []).append(_claimed_recipient(row))
    messages = [m for m in (_load_message(conn, mid, rcpts) for mid, rcpts in by_message.items()) if m]
    for message in messages:
        if whole_messages and not message.preprocessed:
            _claim_the_rest(conn, message, owner)
    return messages


_CLAIMED_COLUMNS = "message_id, idx, address, addrtype, type, transport, nexthop, attempts, notify, orcpt"
# One priority class's due recipients, oldest due first, claimed (PostgreSQL's own spelling:
# stores/postgresql.py, with FOR UPDATE SKIP LOCKED, so that nodes claim past each other).
CLAIM_SQL = (
    "UPDATE recipients SET status = 'active', owner = :owner WHERE (message_id, idx) IN (SELECT message_id, idx"
    " FROM recipients WHERE status IN ('queued', 'deferred') AND priority = :priority AND next_attempt_at <= :now"
    f" ORDER BY next_attempt_at LIMIT :limit) RETURNING {_CLAIMED_COLUMNS}")


def _claimed_recipient(row: Sequence[Any]) -> Recipient:
    _mid, idx, address, addrtype, rtype, transport, nexthop, attempts, notify, orcpt = row
    return Recipient(address=address, addrtype=addrtype, type=RecipientType(rtype), transport=transport,
                     nexthop=nexthop, status=Status.ACTIVE, attempts=attempts, index=idx,
                     dsn=recipient_dsn(notify, orcpt))


def _claim_the_rest(conn: sqlite3.Connection, message: Message, owner: str | None) -> None:
    """Claim the message's other waiting recipients too, due or not: the hooks must see them all
    (one that was deferred before hooks were configured is tried again early, once)."""
    rest = conn.execute(f"UPDATE recipients SET status = 'active', owner = ? WHERE message_id = ? AND status IN"
                        f" ('queued', 'deferred') RETURNING {_CLAIMED_COLUMNS}", (owner, message.id)).fetchall()
    message.recipients += [_claimed_recipient(row) for row in rest]
    message.recipients.sort(key=lambda r: r.index)


def _load_message(conn: sqlite3.Connection, message_id: str, recipients: list[Recipient]) -> Message | None:
    row = conn.execute(
        "SELECT m.sender, m.submitted_at, m.mailbox, m.folder, m.message_class, m.priority, m.deliver_after,"
        " m.expires_at, m.delete_after_submit, m.held, m.origin, m.headers_prefix, c.data, m.ret, m.envid,"
        " m.preprocessed, m.max_attempts FROM messages m JOIN contents c ON c.id = m.content_id WHERE m.id = ?",
        (message_id,)
    ).fetchone()
    if row is None:
        return None
    (sender, submitted_at, mailbox, folder, cls, priority, deliver_after, expires_at, das, held, origin,
     prefix, data, ret, envid, preprocessed, max_attempts) = row
    return Message(id=message_id, sender=sender, content=bytes(data), recipients=recipients,
                   submitted_at=submitted_at, mailbox=mailbox, folder=folder, message_class=cls,
                   priority=priority, deliver_after=deliver_after, expires_at=expires_at,
                   delete_after_submit=bool(das), held=bool(held), origin=origin,
                   headers_prefix=bytes(prefix or b""), preprocessed=bool(preprocessed), max_attempts=max_attempts,
                   dsn=MessageDSN(Ret(ret) if ret else None, envid) if ret or envid else None)


def op_settle(conn: sqlite3.Connection, settlements: Sequence[Settlement], now: float,
              crash_limit: int = 0, owner: str | None = None) -> list[Event]:
    """Record outcomes (and the route each recipient took). A temporary failure of a held message
    leaves it held; a recipient that is no longer active (deleted, or settled already) is left
    alone. A local delivery files its copy in the same step. A message whose attempts crashed its
    transport `crash_limit` times is held (poison isolation, as Exim freezes a message).

    Fenced (issue 11.4): with `owner`, a recipient no longer held by that node (its lease ran out
    and another node rescued it) is left alone too, with nothing recorded of the outcome — no
    event, no report debt, no copy filed: the node that lost the lease can never record over the
    work of the one that took it."""
    settle_sql = _SETTLE_SQL if owner is None else _SETTLE_SQL.replace(" AND status = 'active'",
                                                                        " AND status = 'active' AND owner = :owner")
    events: list[Event] = []
    touched: dict[str, None] = {}
    crashed = {s.message_id for s in settlements if s.crashed}
    for s in settlements:
        status = s.status
        if status is Status.DEFERRED and _is_held(conn, s.message_id):
            status = Status.HELD
        reply = s.reply
        warn_now = status is Status.DEFERRED and s.warn_at is not None and s.warn_at <= now
        row = conn.execute(settle_sql, {
            "status": str(status), "attempted": int(s.attempted), "next_at": s.next_attempt_at, "now": now,
            "code": reply.code if reply else None, "enhanced": reply.enhanced if reply else None,
            "text": reply.text if reply else None, "remote": s.remote, "wait": int(s.wait_destination),
            "transport": s.transport, "nexthop": s.nexthop, "report": _report_due(status, s, warn_now),
            "final": int(status.final), "warn_now": int(warn_now), "warn_at": s.warn_at,
            "message_id": s.message_id, "idx": s.index, "owner": owner,
        }).fetchone()
        if row is None:
            continue
        touched[s.message_id] = None
        events += [_file_copy(conn, s.message_id, copy) for copy in s.copies]
        if s.history:
            _insert_history(conn, s.message_id, now, "inbound", [dataclasses.replace(h, detail=f"<{s.address}> "
                                                                                    f"{h.detail}") for h in s.history])
        for spawned in s.spawn:
            events += op_submit(conn, spawned, ())
        if status in _STATUS_EVENT:
            events.append(_insert_event(conn, _recipient_event(s.message_id, s.address, status, reply, now,
                                                               row[0], s.remote)))
    for message_id in crashed & touched.keys():
        events += _count_crash(conn, message_id, crash_limit, now)
    for message_id in touched:
        events += _finish_if_done(conn, message_id, now)
    return events


def _count_crash(conn: sqlite3.Connection, message_id: str, limit: int, now: float) -> list[Event]:
    crashes = conn.execute("UPDATE messages SET crashes = crashes + 1 WHERE id = ? RETURNING crashes",
                           (message_id,)).fetchone()[0]
    if not limit or crashes < limit:
        return []
    reason = f"crashed its transport {crashes} times"
    _insert_history(conn, message_id, now, "transport", [HookRecord("", "held", reason)])
    return _hold(conn, message_id, reason, now, "('queued','deferred')")


# One outcome. `report`: a new debt wins, except a delay notice the recipient had already
# (warn_at = 0: one per recipient); a delay notice not yet written is void once the recipient is
# final (delivered, failed: the notice would be untrue). `warn_at` keeps when the notice falls due
# for the delay timer, and becomes 0 once it is owed, in the same step: a crash neither loses the
# notice nor repeats it.
_SETTLE_SQL = (
    "UPDATE recipients SET status = :status, attempts = attempts + :attempted, next_attempt_at = :next_at,"
    " last_attempt_at = CASE WHEN :attempted = 1 THEN :now ELSE last_attempt_at END,"
    " reply_code = COALESCE(:code, reply_code), reply_enhanced = COALESCE(:enhanced, reply_enhanced),"
    " reply_text = COALESCE(:text, reply_text), remote = COALESCE(:remote, remote), wait_destination = :wait,"
    " transport = COALESCE(:transport, transport), nexthop = COALESCE(:nexthop, nexthop),"
    " report = CASE WHEN CAST(:report AS TEXT) IS NOT NULL"
    "  AND (:report <> 'delayed' OR warn_at IS NULL OR warn_at <> 0) THEN :report"
    "  WHEN :final = 1 AND report = 'delayed' THEN NULL ELSE report END,"
    " warn_at = CASE WHEN warn_at = 0 OR :warn_now = 1 THEN 0 ELSE COALESCE(:warn_at, warn_at) END,"
    " owner = NULL"
    " WHERE message_id = :message_id AND idx = :idx AND status = 'active' RETURNING transport")


def _report_due(status: Status, s: Settlement, warn_now: bool) -> str | None:
    """The report action this outcome owes the sender (RFC 3461 NOTIFY; a delay notice only once
    it fell due), recorded with the outcome in one step so that a crash can neither lose the
    report nor send it twice."""
    action = report_action(status, s.dsn or RecipientDSN(), handoff=s.handoff, warn_delays=warn_now)
    return None if action is None else str(action)


def _is_held(conn: sqlite3.Connection, message_id: str) -> bool:
    row = conn.execute("SELECT held FROM messages WHERE id = ?", (message_id,)).fetchone()
    return bool(row and row[0])


def _owned_by(owner: str | None) -> tuple[str, tuple[Any, ...]]:
    """The condition "held by node `owner`" (None: by no node), without `IS ?`, which not every
    SQL dialect takes for a value."""
    return ("owner IS NULL", ()) if owner is None else ("owner = ?", (owner,))


def op_unclaim(conn: sqlite3.Connection, recipients: Sequence[tuple[str, int]], now: float,
               owner: str | None = None) -> list[Event]:
    """Claimed recipients that the delivery process dropped from memory unattempted (their message
    was held, requeued or deleted while they waited for a connection) wait again, in one step:
    held when their message is held, else due now. Only rows still active change: one settled
    meanwhile, or deleted with its message, is left alone. With `owner`, only rows that node still
    holds (fenced): intake takes back a hand-over its delivery process died before receiving,
    never what the next node claimed."""
    owned, params = ("1 = 1", ()) if owner is None else _owned_by(owner)
    events = []
    for message_id, index in recipients:
        row = _give_back(conn, message_id, index, now, owned, params)
        if row is not None and row[0] == Status.HELD:
            events.append(_insert_event(conn, Event(EventType.HELD, message_id, now, recipient=row[1],
                                                    detail={"transport": row[2]})))
    return events


def _give_back(conn: sqlite3.Connection, message_id: str, index: int, now: float, owned: str,
               params: tuple[Any, ...]) -> tuple[str, str, str | None] | None:
    """An active recipient waits again (held when its message is, else due now) if the `owned`
    condition still holds; returns its (status, address, transport), or None when it did not change."""
    row: tuple[str, str, str | None] | None = conn.execute(
        "UPDATE recipients SET status = CASE WHEN (SELECT held FROM messages m WHERE m.id = recipients.message_id) = 1"
        " THEN 'held' ELSE 'queued' END, next_attempt_at = ?, wait_destination = 0, owner = NULL"
        f" WHERE message_id = ? AND idx = ? AND status = 'active' AND {owned} RETURNING status, address, transport",
        (now, message_id, index, *params)).fetchone()
    return row


def _give_back_all(conn: sqlite3.Connection, rows: Iterable[tuple[str, int, str | None]], now: float,
                   stage: str, why: Callable[[str, str | None], str], extra: str = "",
                   params: tuple[Any, ...] = ()) -> list[Event]:
    """Give back each (message id, index, owner) still active and held as seen (and `extra`),
    with a line in its message's history; the `held` events of those whose message is held."""
    events = []
    for message_id, index, owner in rows:
        owned, owner_params = _owned_by(owner)
        row = _give_back(conn, message_id, index, now, owned + extra, (*owner_params, *params))
        if row is not None:
            if row[0] == Status.HELD:
                events.append(_insert_event(conn, Event(EventType.HELD, message_id, now, recipient=row[1])))
            _insert_history(conn, message_id, now, stage, [HookRecord("", "returned", why(row[1], owner))])
    return events


def active_recipients(conn: sqlite3.Connection) -> list[tuple[str, int, str | None]]:
    return conn.execute("SELECT message_id, idx, owner FROM recipients WHERE status = 'active'").fetchall()


def op_return_stuck(conn: sqlite3.Connection, rows: Sequence[tuple[str, int, str | None]], now: float) -> list[Event]:
    """The watchdog's give-back: like op_unclaim, for rows still active and still owned as seen."""
    return _give_back_all(conn, rows, now, "watchdog", lambda address, _owner:
                          f"<{address}> was active with no delivery holding it")


# --------------------------------------------------------------------------------------------
# Leases (issue 11.4): a node's lease covers every recipient it holds `active` (recipients.owner);
# one heartbeat renews them all. Judged by a heartbeat that advances, never by how long a row has
# been active (River's and Oban's time-based rescue ran live work twice); rescued by NOT EXISTS a
# live node row, so a pruned or missing row never hides work (procrastinate#1518).

_LIVE_NODE = "EXISTS (SELECT 1 FROM nodes n WHERE n.owner = {owner} AND n.lease_until >= ?)"


def node_live(conn: sqlite3.Connection, owner: str, now: float) -> bool:
    """Does node `owner` hold a lease at `now`? An expired one never comes back (op_heartbeat)."""
    return bool(conn.execute(f"SELECT {_LIVE_NODE.format(owner='?')}", (owner, now)).fetchone()[0])


def op_register_node(conn: sqlite3.Connection, owner: str, host: str, pid: int, now: float, lease_time: float,
                     sole: bool = False) -> None:
    """A node starts delivering, with a lease until `now + lease_time`. Its identity must be new
    (the primary key refuses a reused one). `sole`: the caller proved that no other node of this
    spool lives (SQLite's delivery lock): every other node's lease ends at its last heartbeat, so
    their work is rescued at once instead of a lease time later."""
    if sole:
        conn.execute("UPDATE nodes SET lease_until = COALESCE(heartbeat_at, started_at, 0)"
                     " WHERE owner <> ? AND lease_until > COALESCE(heartbeat_at, started_at, 0)", (owner,))
    conn.execute("INSERT INTO nodes (owner, host, pid, started_at, heartbeat_at, lease_until) VALUES (?,?,?,?,?,?)",
                 (owner, host, pid, now, now, now + lease_time))


def op_heartbeat(conn: sqlite3.Connection, owner: str, now: float, lease_time: float) -> bool:
    """Renew node `owner`'s lease, and with it every recipient it holds (one row written, not
    theirs). False when its lease had run out or its row is gone: it is dead to the others, its
    work may be someone else's already, and it must stop (a dead lease is never renewed)."""
    return conn.execute("UPDATE nodes SET heartbeat_at = ?, lease_until = ? WHERE owner = ? AND lease_until >= ?",
                        (now, now + lease_time, owner, now)).rowcount == 1


def active_owners(conn: sqlite3.Connection) -> list[str | None]:
    """The distinct owners of active recipients (None: rows no node holds), one index probe each
    by skipping along `recipients_active_by_owner`: a few nodes holding ten thousand rows cost a
    few probes, not a scan, on every heartbeat."""
    owners: list[str | None] = []
    if conn.execute("SELECT 1 FROM recipients WHERE status = 'active' AND owner IS NULL LIMIT 1").fetchone():
        owners.append(None)
    last = ""
    while row := conn.execute("SELECT owner FROM recipients WHERE status = 'active' AND owner > ?"
                              " ORDER BY owner LIMIT 1", (last,)).fetchone():
        last = row[0]
        owners.append(last)
    return owners


def rescue_due(conn: sqlite3.Connection, now: float) -> bool:
    """Is there anything for op_rescue to do: work of a node without a live lease, or a node row
    to prune? Read-only, so that a heartbeat with nothing to rescue takes no write lock for it."""
    if any(owner is None or not node_live(conn, owner, now) for owner in active_owners(conn)):
        return True
    long_dead = conn.execute("SELECT 1 FROM nodes WHERE lease_until < ? LIMIT 1", (now - NODE_RETENTION,))
    return long_dead.fetchone() is not None


def op_rescue(conn: sqlite3.Connection, now: float, chunk: int = CHUNK) -> int:
    """Active recipients whose node holds no live lease (expired, retired, pruned, never
    registered) wait again — held if their message is, else due now — each with a line in its
    history; a chunk per call. Once none is left, node rows dead for NODE_RETENTION are pruned."""
    rows: list[tuple[str, int, str | None]] = []
    for owner in active_owners(conn):
        if len(rows) >= chunk:
            break
        if owner is None or not node_live(conn, owner, now):
            owned, params = _owned_by(owner)
            rows += conn.execute(f"SELECT message_id, idx, owner FROM recipients WHERE status = 'active' AND {owned}"
                                 " LIMIT ?", (*params, chunk - len(rows))).fetchall()
    still_dead = f" AND NOT {_LIVE_NODE.format(owner='recipients.owner')}"
    _give_back_all(conn, rows, now, "rescue", lambda address, owner: f"<{address}> was active for node"
                   f" {owner or '(none)'}, which holds no lease any more", still_dead, (now,))
    if len(rows) < chunk:
        conn.execute("DELETE FROM nodes WHERE lease_until < ? AND NOT EXISTS (SELECT 1 FROM recipients r"
                     " WHERE r.status = 'active' AND r.owner = nodes.owner)", (now - NODE_RETENTION,))
    return len(rows)


def op_retire_node(conn: sqlite3.Connection, owner: str, now: float) -> int:
    """A clean stop: what node `owner` still holds waits again (its transactions were cancelled:
    their outcome is unknown), then its row goes. Returns how many recipients it gave back."""
    rows = conn.execute("SELECT message_id, idx, owner FROM recipients WHERE status = 'active' AND owner = ?",
                        (owner,)).fetchall()
    _give_back_all(conn, rows, now, "rescue", lambda address, _owner: f"<{address}> was active when node"
                   f" {owner} stopped")
    conn.execute("DELETE FROM nodes WHERE owner = ?", (owner,))
    return len(rows)


def op_drain_node(conn: sqlite3.Connection, owner: str, now: float) -> bool:
    """Ask live node `owner` to drain (it sees the flag at its next heartbeat); False when none lives."""
    return conn.execute("UPDATE nodes SET draining = 1 WHERE owner = ? AND lease_until >= ?",
                        (owner, now)).rowcount == 1


def list_nodes(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """Every node row, oldest first, with the leases it holds (active recipients) and whether it
    is alive (its lease has not run out)."""
    rows = conn.execute(
        "SELECT owner, host, pid, started_at, heartbeat_at, lease_until, draining, (SELECT count(*) FROM recipients r"
        " WHERE r.status = 'active' AND r.owner = n.owner) FROM nodes n ORDER BY started_at, owner").fetchall()
    return [{"owner": owner, "host": host, "pid": pid, "started_at": started_at, "heartbeat_at": heartbeat_at,
             "lease_until": lease_until, "draining": bool(draining), "leases": leases,
             "alive": lease_until is not None and lease_until >= now}
            for owner, host, pid, started_at, heartbeat_at, lease_until, draining, leases in rows]


def op_release_destination(conn: sqlite3.Connection, transport: str, nexthop: str, now: float,
                           chunk: int = CHUNK) -> int:
    """A destination answered again: its waiting backlog becomes due now (chunked so that intake
    commits interleave with a large release)."""
    return conn.execute(
        "UPDATE recipients SET next_attempt_at = ?, wait_destination = 0 WHERE (message_id, idx) IN"
        " (SELECT message_id, idx FROM recipients WHERE status = 'deferred' AND wait_destination = 1"
        " AND transport = ? AND nexthop = ? LIMIT ?)", (now, transport, nexthop, chunk)).rowcount


def op_mark_delay_warnings(conn: sqlite3.Connection, now: float, chunk: int = CHUNK) -> int:
    """Owe the delay notice of deferred recipients whose time came while they waited without a
    new outcome (a down destination's backlog, a long backoff): by index, a chunk per call."""
    return conn.execute(
        "UPDATE recipients SET report = COALESCE(report, 'delayed'), warn_at = 0 WHERE (message_id, idx) IN"
        " (SELECT message_id, idx FROM recipients WHERE status = 'deferred' AND warn_at > 0 AND warn_at <= ?"
        " ORDER BY warn_at LIMIT ?)",
        (now, chunk)).rowcount


def next_delay_warning(conn: sqlite3.Connection) -> float | None:
    """When the next delay notice of a deferred recipient falls due (by index)."""
    row = conn.execute("SELECT warn_at FROM recipients WHERE status = 'deferred' AND warn_at > 0"
                       " ORDER BY warn_at LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def next_due(conn: sqlite3.Connection) -> float | None:
    """The earliest next attempt: the head of each priority class's range (one index probe each)."""
    heads = [row[0] for priority in PRIORITY_CLASSES for row in conn.execute(
        "SELECT next_attempt_at FROM recipients WHERE status IN ('queued', 'deferred') AND priority = ?"
        " AND next_attempt_at IS NOT NULL ORDER BY next_attempt_at LIMIT 1", (priority,))]
    return float(min(heads)) if heads else None


def waiting_destinations(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [(t, n) for t, n in conn.execute(
        "SELECT DISTINCT transport, nexthop FROM recipients WHERE status = 'deferred' AND wait_destination = 1")]


def _existing(conn: sqlite3.Connection, ids: Iterable[str]) -> list[str]:
    return [i for i in ids if conn.execute("SELECT 1 FROM messages WHERE id = ?", (i,)).fetchone()]


def op_hold(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[str]:
    found = _existing(conn, ids)
    for message_id in found:
        conn.execute("UPDATE messages SET held = 1 WHERE id = ?", (message_id,))
        for address, transport in conn.execute(
            "UPDATE recipients SET status = 'held' WHERE message_id = ? AND status IN ('queued','deferred')"
            " RETURNING address, transport", (message_id,)).fetchall():
            _insert_event(conn, Event(EventType.HELD, message_id, now, recipient=address,
                                      detail={"transport": transport}))
    return found


def op_release(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[str]:
    found = _existing(conn, ids)
    for message_id in found:
        conn.execute("UPDATE messages SET held = 0 WHERE id = ?", (message_id,))
        conn.execute("UPDATE recipients SET status = 'queued', next_attempt_at = ?, wait_destination = 0"
                     " WHERE message_id = ? AND status = 'held'", (now, message_id))
    return found


def op_flush(conn: sqlite3.Connection, ids: Sequence[str] | None, now: float, chunk: int = CHUNK) -> int:
    """Make deferred (and not-yet-due queued) recipients due now: those of `ids`, or — a chunk per
    call, so intake's commits interleave with flushing a million — all of them."""
    update = "UPDATE recipients SET next_attempt_at = ?, wait_destination = 0 WHERE "
    waiting = "status IN ('queued', 'deferred') AND next_attempt_at > ?"
    if ids is None:  # `priority IN (...)` lets the range use recipients_due_by_priority
        return conn.execute(f"{update} (message_id, idx) IN (SELECT message_id, idx FROM recipients WHERE {waiting}"
                            f" AND priority IN {PRIORITY_CLASSES} LIMIT ?)", (now, now, chunk)).rowcount
    return sum(conn.execute(f"{update} {waiting} AND message_id = ?", (now, now, i)).rowcount for i in ids)


def op_set_receive_folder(conn: sqlite3.Connection, mailbox: str, message_class: str, folder: str) -> None:
    """MAPI SetReceiveFolder: file messages of `message_class` (and its subclasses) into `folder`."""
    conn.execute("INSERT OR IGNORE INTO mailboxes (address, created_at) VALUES (?, ?)", (mailbox, time.time()))
    conn.execute("INSERT INTO receive_folders (mailbox, message_class, folder) VALUES (?,?,?)"
                 " ON CONFLICT (mailbox, message_class) DO UPDATE SET folder = excluded.folder",
                 (mailbox, message_class, folder))


def op_delete(conn: sqlite3.Connection, ids: Sequence[str]) -> list[str]:
    found = _existing(conn, ids)
    _delete_messages(conn, found)
    return found


def op_cancel_recipients(conn: sqlite3.Connection, keep: dict[str, list[int]], now: float) -> dict[str, list[str]]:
    """`queue delete` of messages a transport has in flight: their other waiting recipients are
    cancelled (removed, with a line in the history); the ones in `keep` go on."""
    cancelled: dict[str, list[str]] = {}
    for message_id, indexes in keep.items():
        marks = ",".join("?" * len(indexes))
        rows = conn.execute(f"DELETE FROM recipients WHERE message_id = ? AND status IN {_PENDING_SQL}"
                            f" AND idx NOT IN ({marks}) RETURNING address", (message_id, *indexes)).fetchall()
        cancelled[message_id] = [address for (address,) in rows]
        if rows:
            _insert_history(conn, message_id, now, "operator",
                            [HookRecord("", "cancelled", f"<{address}> by queue delete; others were in flight")
                             for (address,) in rows])
    return cancelled


def op_set_read(conn: sqlite3.Connection, ids: Sequence[str], read: bool, now: float) -> list[Event]:
    """MAPI SetReadFlag: set or clear the read flag; a `read` event for each message it changed."""
    events = []
    for message_id in ids:
        row = conn.execute("UPDATE messages SET read = ? WHERE id = ? AND read != ? RETURNING mailbox, folder",
                           (int(read), message_id, int(read))).fetchone()
        if row is not None:
            events.append(_insert_event(conn, Event(EventType.READ, message_id, now, mailbox=row[0], folder=row[1],
                                                    detail={"read": read})))
    return events


def op_send_receipt(conn: sqlite3.Connection, receipt: ReadReceipt, now: float) -> list[Event]:
    """MAPI ReadReceipt: record the disposition and submit the MDN in one step, and only while the
    message has none recorded (RFC 8098 §2.1: one MDN per message) and, for `deleted`, is unread;
    so a crash or a concurrent request neither loses nor doubles it. Then apply the disposition:
    the message is marked read, or deleted."""
    deleted = receipt.disposition is Disposition.DELETED
    row = conn.execute("UPDATE messages SET mdn = ? WHERE id = ? AND mdn IS NULL AND (? = 0 OR read = 0)"
                       " RETURNING mailbox, folder", (receipt.recorded, receipt.message_id, int(deleted))).fetchone()
    events: list[Event] = []
    if row is not None and receipt.mdn is not None:
        events += op_submit(conn, receipt.mdn, receipt.copies)
        events.append(_insert_event(conn, Event(
            EventType.REPORT, receipt.message_id, now, mailbox=row[0], folder=row[1],
            detail={"report_id": receipt.mdn.id, "class": receipt.mdn.message_class,
                    "disposition": str(receipt.disposition)})))
    if deleted:
        _delete_messages(conn, [receipt.message_id])
    else:
        events += op_set_read(conn, [receipt.message_id], True, now)
    return events


def pending_reports(conn: sqlite3.Connection, limit: int) -> list[PendingReport]:
    out = []
    for (message_id,) in conn.execute("SELECT DISTINCT message_id FROM recipients WHERE report IS NOT NULL LIMIT ?",
                                      (limit,)).fetchall():
        row = conn.execute("SELECT sender, submitted_at, message_class, ret, envid, expires_at, deliver_after"
                           " FROM messages WHERE id = ?", (message_id,)).fetchone()
        content = get_content(conn, message_id)
        if row is None or content is None:  # deleted meanwhile, recipients with it
            continue
        sender, submitted_at, message_class, ret, envid, expires_at, deliver_after = row
        recipients = [{"index": idx, "address": address, "action": report, "remote": remote, "orcpt": orcpt,
                       "last_attempt_at": last_at, "reply": Reply(code or 0, enhanced or "", text or "")}
                      for idx, address, report, code, enhanced, text, remote, orcpt, last_at in conn.execute(
                          "SELECT idx, address, report, reply_code, reply_enhanced, reply_text, remote, orcpt,"
                          " last_attempt_at FROM recipients WHERE message_id = ? AND report IS NOT NULL ORDER BY idx",
                          (message_id,))]
        dsn = MessageDSN(Ret(ret) if ret else None, envid) if ret or envid else None
        out.append(PendingReport(message_id, sender, submitted_at, message_class, content, dsn, recipients,
                                 expires_at, deliver_after))
    return out


def op_reported(conn: sqlite3.Connection, message_id: str, owed: Sequence[tuple[int, str]], report: Message | None,
                copies: Sequence[Message], owner: str | None = None, now: float = 0.0) -> list[Event]:
    """The report for these recipients is written (or deliberately dropped): submit it and clear
    their debt in one step. `owed` is (index, action) as `pending_reports` read it: a debt that
    changed meanwhile (a delay notice overtaken by a failure) stays owed. Fenced: with `owner`,
    a node whose lease ran out at `now` writes nothing (the debt stays for a live node)."""
    if owner is not None and not node_live(conn, owner, now):
        return []
    events = op_submit(conn, report, copies) if report is not None else []
    conn.executemany("UPDATE recipients SET report = NULL WHERE message_id = ? AND idx = ? AND report = ?",
                     [(message_id, i, action) for i, action in owed])
    if report is not None:
        events.append(_insert_event(conn, Event(EventType.REPORT, message_id, report.submitted_at,
                                                detail={"report_id": report.id, "class": report.message_class})))
    done = conn.execute("SELECT 1 FROM messages WHERE id = ? AND folder = ? AND delete_after_submit = 1",
                        (message_id, SENT)).fetchone()
    if done and not _reports_owed(conn, message_id):
        _delete_messages(conn, [message_id])
    return events


def op_webhook_cursor(conn: sqlite3.Connection) -> int:
    """The webhook cursor; the first time, the newest event: webhooks get what happens from the
    moment they are configured, not the day of history the spool keeps."""
    conn.execute("INSERT OR IGNORE INTO webhook_cursor (id, event_id) SELECT 1, COALESCE(max(id), 0) FROM events")
    return int(conn.execute("SELECT event_id FROM webhook_cursor WHERE id = 1").fetchone()[0])


def op_enqueue_webhooks(conn: sqlite3.Connection, after: int, upto: int,
                        messages: Sequence[Message]) -> list[Event] | None:
    """Queue the webhook deliveries for the events after `after` up to `upto` and move the cursor
    there, in one step: a crash leaves either both or neither. None (and nothing written) when the
    cursor is no longer at `after`: another dispatcher queued these events already."""
    if conn.execute("UPDATE webhook_cursor SET event_id = ? WHERE id = 1 AND event_id = ?",
                    (upto, after)).rowcount != 1:
        return None
    return [event for msg in messages for event in op_submit(conn, msg, ())]


def op_purge(conn: sqlite3.Connection, sent_before: float, events_before: float, chunk: int = 2000) -> int:
    """Housekeeping: drop the spool's own finished messages and old events past their retention."""
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM messages WHERE folder = 'sent' AND mailbox = '' AND finished_at < ? LIMIT ?",
        (sent_before, chunk))]
    _delete_messages(conn, ids)
    conn.execute("DELETE FROM events WHERE time < ?", (events_before,))
    return len(ids)


# --------------------------------------------------------------------------------------------
# Outbound hooks (MAPI preprocessing): the pipeline's answer recorded, and `queue requeue`.

DROPPED = Reply(550, "5.7.1", "recipient removed by an outbound hook")


def _insert_history(conn: sqlite3.Connection, message_id: str, now: float, stage: str,
                    records: Iterable[HookRecord]) -> None:
    conn.executemany("INSERT INTO history (message_id, time, stage, hook, outcome, detail) VALUES (?,?,?,?,?,?)",
                     [(message_id, now, stage, r.hook, r.outcome, r.detail) for r in records])


def op_preprocessed(conn: sqlite3.Connection, message: Message, result: Preprocessed,
                    now: float, owner: str | None = None) -> tuple[list[Message], list[Event]]:
    """Record what the outbound hooks made of a message's active recipients, in one step: a
    rejection fails them (an NDR follows), a hook's failure holds the message (the hooks are not
    done: they run again on release), drafts replace it — the first draft is the stored message
    (changed content gets a content row of its own; the submitted one is kept for `requeue`), each
    further draft becomes a new message that takes its recipients along. A hook's Hold keeps the
    drafts held: the hooks are done, and release sends them as they are (Postfix postsuper -H).
    Returns the messages to deliver now.

    Fenced (issue 11.4): with `owner`, when that node no longer holds every one of the message's
    active recipients (its lease ran out and another node took them), nothing is recorded."""
    active = {r.index: r for r in message.recipients if r.status is Status.ACTIVE}
    if owner is not None and not _holds_all(conn, owner, message.id, list(active)):
        return [], []
    _insert_history(conn, message.id, now, "outbound", result.history)
    if isinstance(result.verdict, Reject):
        conn.execute("UPDATE messages SET preprocessed = 1 WHERE id = ?", (message.id,))
        return [], op_settle(conn, [Settlement(message.id, r.index, r.address, Status.FAILED, result.verdict.reply,
                                               attempted=False, dsn=r.dsn) for r in active.values()], now,
                             owner=owner)
    if isinstance(result.verdict, Hold):
        return [], _hold(conn, message.id, result.verdict.reason, now, "('active')")
    first, *others = result.drafts
    kept = _apply_draft(conn, message, first, active, owner)
    children = [_split_off(conn, message, draft, active, now, owner) for draft in others]
    placed = {r.index for draft in result.drafts for r in draft.recipients}
    dropped = [Settlement(message.id, r.index, r.address, Status.FAILED, DROPPED, attempted=False,
                          dsn=RecipientDSN(frozenset())) for i, r in active.items() if i not in placed]
    conn.execute("UPDATE messages SET preprocessed = 1 WHERE id = ?", (message.id,))
    events = [_insert_event(conn, Event(EventType.SUBMITTED, c.id, now, detail={"sender": c.sender, "size": c.size,
                                                                                "split_from": message.id}))
              for c in children]
    events += op_settle(conn, dropped, now, owner=owner) if dropped else _finish_if_done(conn, message.id, now)
    ready = [m for m in (kept, *children) if m.recipients]
    if result.hold is None:
        return ready, events
    for m in ready:  # after the dropped ones settled: they were active too
        events += _hold(conn, m.id, result.hold.reason, now, "('active')")
    return [], events


def _holds_all(conn: sqlite3.Connection, owner: str, message_id: str, indexes: Sequence[int]) -> bool:
    """Does node `owner` hold all these recipients of the message `active`?"""
    if not indexes:
        return True
    marks = ",".join("?" * len(indexes))
    held = conn.execute(f"SELECT count(*) FROM recipients WHERE message_id = ? AND idx IN ({marks})"
                        " AND status = 'active' AND owner = ?", (message_id, *indexes, owner)).fetchone()[0]
    return bool(held == len(indexes))


def _hold(conn: sqlite3.Connection, message_id: str, reason: str, now: float, statuses: str) -> list[Event]:
    """Hold a message for a reason (a hook's verdict or error, a crashing transport): its
    recipients in `statuses` are held until `queue release` or `requeue`."""
    conn.execute("UPDATE messages SET held = 1 WHERE id = ?", (message_id,))
    rows = conn.execute(f"UPDATE recipients SET status = 'held' WHERE message_id = ? AND status IN {statuses}"
                        " RETURNING address", (message_id,)).fetchall()
    return [_insert_event(conn, Event(EventType.HELD, message_id, now, recipient=address, detail={"reason": reason}))
            for (address,) in rows]


def _apply_draft(conn: sqlite3.Connection, message: Message, draft: Draft, active: dict[int, Recipient],
                 owner: str | None) -> Message:
    """The stored message becomes the first draft: content, sender, recipients (renamed, added)."""
    if draft.content != message.content or draft.sender != message.sender:
        content_id = _insert_content(conn, draft.content)
        old = conn.execute("SELECT content_id FROM messages WHERE id = ?", (message.id,)).fetchone()[0]
        conn.execute("UPDATE messages SET source_content_id = COALESCE(source_content_id, content_id),"
                     " source_sender = COALESCE(source_sender, sender), content_id = ?, sender = ?, size = ?"
                     " WHERE id = ?", (content_id, draft.sender, len(draft.content), message.id))
        _drop_content_if_unused(conn, old)
    recipients: list[Recipient] = []
    next_index = conn.execute("SELECT COALESCE(max(idx), -1) + 1 FROM recipients WHERE message_id = ?",
                              (message.id,)).fetchone()[0]
    for d in draft.recipients:
        if d.index is None:
            r = Recipient(d.address, d.addrtype.upper(), status=Status.ACTIVE, index=next_index,
                          next_attempt_at=message.submitted_at)
            next_index += 1
            conn.execute(_INSERT_RECIPIENT, _recipient_row(message, r, owner))
            conn.execute("UPDATE recipients SET source_address = '' WHERE message_id = ? AND idx = ?",
                         (message.id, r.index))
        else:
            r = active[d.index]
            if (d.address, d.addrtype.upper()) != (r.address, r.addrtype):
                r = dataclasses.replace(r, address=d.address, addrtype=d.addrtype.upper(), transport=None,
                                        nexthop=None)
                conn.execute("UPDATE recipients SET source_address = COALESCE(source_address, address), address = ?,"
                             " addrtype = ?, transport = NULL, nexthop = NULL WHERE message_id = ? AND idx = ?",
                             (r.address, r.addrtype, message.id, r.index))
        recipients.append(r)
    return dataclasses.replace(message, sender=draft.sender, content=draft.content, recipients=recipients,
                               preprocessed=True)


def _split_off(conn: sqlite3.Connection, message: Message, draft: Draft, active: dict[int, Recipient],
               now: float, owner: str | None) -> Message:
    """A further draft becomes a new outbox message; its recipients move over with their state."""
    child = dataclasses.replace(message, id=new_id(now), sender=draft.sender, content=draft.content,
                                recipients=[], preprocessed=True, headers_prefix=b"",
                                meta={**message.meta, "split_from": message.id})
    for position, d in enumerate(draft.recipients):
        base = active[d.index] if d.index is not None else Recipient(d.address, next_attempt_at=now)
        child.recipients.append(dataclasses.replace(base, address=d.address, addrtype=d.addrtype.upper(),
                                                    index=position, status=Status.ACTIVE, transport=None,
                                                    nexthop=None))
        if d.index is not None:
            conn.execute("DELETE FROM recipients WHERE message_id = ? AND idx = ?", (message.id, d.index))
    content_id = _insert_content(conn, child.content)
    _insert_message(conn, child, content_id, read=True)
    conn.executemany(_INSERT_RECIPIENT, [_recipient_row(child, r, owner) for r in child.recipients])
    conn.execute("UPDATE messages SET preprocessed = 1 WHERE id = ?", (child.id,))
    _insert_history(conn, child.id, now, "outbound", [HookRecord("", "split", f"from {message.id}")])
    return child


def op_requeue(conn: sqlite3.Connection, ids: Sequence[str], now: float) -> list[str]:
    """`queue requeue` (Postfix postsuper -r): the message goes through the outbound hooks again,
    from its content and sender as submitted; its held, deferred and queued recipients are due now."""
    found = [i for i in _existing(conn, ids)
             if conn.execute("SELECT 1 FROM messages WHERE id = ? AND folder = ?", (i, OUTBOX)).fetchone()]
    for message_id in found:
        row = conn.execute("SELECT content_id, source_content_id FROM messages WHERE id = ?", (message_id,)).fetchone()
        conn.execute("UPDATE messages SET held = 0, preprocessed = 0, crashes = 0,"
                     " content_id = COALESCE(source_content_id, content_id), sender = COALESCE(source_sender, sender),"
                     " source_content_id = NULL, source_sender = NULL WHERE id = ?", (message_id,))
        if row[1] is not None:
            _drop_content_if_unused(conn, row[0])
        waiting = "message_id = ? AND status IN ('held', 'deferred', 'queued')"
        conn.execute(f"DELETE FROM recipients WHERE {waiting} AND source_address = ''", (message_id,))
        conn.execute("UPDATE recipients SET status = 'queued', next_attempt_at = ?, wait_destination = 0,"
                     " address = COALESCE(source_address, address), source_address = NULL"
                     f" WHERE {waiting}", (now, message_id))
        _insert_history(conn, message_id, now, "operator", [HookRecord("", "requeued")])
    return found


# --------------------------------------------------------------------------------------------
# Reads, shaped for `queue list/show --json` and the HTTP API.

_RECIPIENT_COLUMNS = ("message_id, idx, address, addrtype, type, transport, nexthop, status, attempts,"
                      " next_attempt_at, last_attempt_at, reply_code, reply_enhanced, reply_text, remote,"
                      " notify, orcpt")


def _recipient_dict(row: Sequence[Any]) -> dict[str, Any]:
    (_mid, idx, address, addrtype, rtype, transport, nexthop, status, attempts, next_at, last_at, code,
     enhanced, text, remote, notify, orcpt) = row
    reply = Reply(code, enhanced or "", text or "").line() if code is not None else None
    return {"index": idx, "address": address, "addrtype": addrtype, "type": rtype, "transport": transport,
            "destination": nexthop, "status": status, "attempts": attempts, "next_attempt_at": next_at,
            "last_attempt_at": last_at, "last_reply": reply, "relay": remote, "notify": notify, "orcpt": orcpt}


_MESSAGE_COLUMNS = ("id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority,"
                    " deliver_after, expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags")


def _message_info(row: Sequence[Any], recipients: list[dict[str, Any]]) -> MessageInfo:
    (message_id, mailbox, folder, sender, size, submitted_at, finished_at, message_class, priority, deliver_after,
     expires_at, held, origin, ret, envid, read, mdn, max_attempts, flags) = row
    return MessageInfo(message_id, mailbox, folder, sender, size, submitted_at, finished_at, message_class,
                       priority, deliver_after, expires_at, bool(held), origin, recipients, ret, envid,
                       bool(read), mdn, max_attempts, flags=tuple(flags.split()) if flags else ())


def iter_messages(conn: sqlite3.Connection, folders: Sequence[str] = (OUTBOX,), mailbox: str | None = None,
                  page: int = 500, after: tuple[float, str] | None = None) -> Iterator[MessageInfo]:
    """Stream messages in submission order, a page at a time (a million cost disk, not RAM),
    from just past `after` (submitted_at, id)."""
    after = after if after is not None else (-1.0, "")
    marks = ",".join("?" * len(folders))
    where = f"folder IN ({marks})" + (" AND mailbox = ?" if mailbox is not None else "")
    params: list[Any] = [*folders] + ([mailbox] if mailbox is not None else [])
    while True:
        rows = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where} AND (submitted_at, id) > (?, ?)"
            " ORDER BY submitted_at, id LIMIT ?", (*params, *after, page)).fetchall()
        if not rows:
            return
        recipients: dict[str, list[dict[str, Any]]] = {r[0]: [] for r in rows}
        marks_ids = ",".join("?" * len(rows))
        for rrow in conn.execute(f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE message_id IN"
                                 f" ({marks_ids}) ORDER BY message_id, idx", list(recipients)):
            recipients[rrow[0]].append(_recipient_dict(rrow))
        for row in rows:
            yield _message_info(row, recipients[row[0]])
        after = (rows[-1][5], rows[-1][0])


def get_message(conn: sqlite3.Connection, message_id: str) -> MessageInfo | None:
    row = conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        return None
    rrows = conn.execute(f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ? ORDER BY idx",
                         (message_id,)).fetchall()
    info = _message_info(row, [_recipient_dict(r) for r in rrows])
    info.history = [{"time": t, "stage": stage, "hook": hook or None, "outcome": outcome, "detail": detail}
                    for t, stage, hook, outcome, detail in conn.execute(
                        "SELECT time, stage, hook, outcome, detail FROM history WHERE message_id = ?"
                        " ORDER BY time, rowid", (message_id,))]
    return info


def get_content(conn: sqlite3.Connection, message_id: str) -> bytes | None:
    row = conn.execute("SELECT m.headers_prefix, c.data FROM messages m JOIN contents c ON c.id = m.content_id"
                       " WHERE m.id = ?", (message_id,)).fetchone()
    return None if row is None else bytes(row[0] or b"") + bytes(row[1])


def queue_counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {str(s): 0 for s in Status}
    for status, n in conn.execute("SELECT status, count(*) FROM recipients r JOIN messages m"
                                  " ON m.id = r.message_id WHERE m.folder = 'outbox' GROUP BY status"):
        counts[status] = n
    counts["messages"] = conn.execute("SELECT count(*) FROM messages WHERE folder = 'outbox'").fetchone()[0]
    return counts


def events_after(conn: sqlite3.Connection, after_id: int, limit: int = 1000) -> list[Event]:
    rows = conn.execute("SELECT id, time, type, message_id, recipient, mailbox, folder, detail FROM events"
                        " WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
    return [Event(EventType(t), mid, tm, recipient=r, mailbox=mb, folder=f,
                  detail=json.loads(d) if d else {}, id=i) for i, tm, t, mid, r, mb, f, d in rows]


# --------------------------------------------------------------------------------------------
# The async face the daemon uses: group commit driven from the event loop, and a reader thread.


class _Job:
    __slots__ = ("durable", "fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], durable: bool,
                 future: asyncio.Future[Any] | None) -> None:
        self.fn, self.durable, self.future = fn, durable, future


class _GroupCommit:
    """Group commit: every write that arrives while a commit is in progress joins the next one,
    so a burst of messages shares one fsync.

    The statements run in the event loop's thread; only BEGIN (which may wait for another
    process's write lock) and COMMIT (the fsync) run in a helper thread. Measured: with all of it
    in a writer thread, each of the ~6 statements per message released and re-took the GIL
    against the busy event loop, and the writer spent two thirds of its time waiting for the GIL,
    holding every client's 250 for ~18 ms. Here the loop pays the statements' CPU it would pay
    anyway, and two GIL handoffs per batch instead of a dozen per message."""

    def __init__(self, conn: sqlite3.Connection, max_batch: int, directory: Path) -> None:
        self.conn, self.max_batch, self.directory = conn, max_batch, directory
        self.jobs: deque[_Job] = deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="msgspool-commit")
        self.synchronous_full = True
        self.commits = 0
        self.committed_jobs = 0
        self._drainer: asyncio.Task[None] | None = None

    def submit(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.jobs.append(_Job(fn, durable, future))
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
            out = [(True, job.fn(self.conn)) for job in batch]
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
        return out

    def _begin(self, durable: bool) -> None:
        if durable != self.synchronous_full:
            self.conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self.synchronous_full = durable
        self.conn.execute("BEGIN IMMEDIATE")

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

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.conn, self.loop = conn, loop
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self.loop.create_future()
        self.jobs.put(_Job(fn, False, future))
        return future

    def stop(self) -> None:
        self.jobs.put(_STOP)
        self.join()

    def run(self) -> None:
        while (job := self.jobs.get()) is not _STOP:
            try:
                result: tuple[bool, Any] = (True, job.fn(self.conn))
            except Exception as err:  # handed to the awaiting coroutine
                result = (False, err)
            self.loop.call_soon_threadsafe(_resolve, [job], [result])
        self.conn.close()


def _resolve(jobs: list[_Job], results: list[tuple[bool, Any]]) -> None:
    for job, (ok, value) in zip(jobs, results, strict=True):
        future = job.future
        if future is None or future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SQLiteStore:
    """The daemon's store. All methods are coroutines; writes share commits."""

    shared = False  # one file on this machine: its delivery lock covers every node of the spool

    @classmethod
    def from_settings(cls, settings: Any) -> SQLiteStore:
        """The `msgspool.stores` entry point: `spool.db` in the data directory."""
        return cls(Path(settings.data_dir) / DB_NAME, commit_batch=settings.commit_batch,
                   crash_limit=settings.crash_limit)

    def __init__(self, path: Path, *, commit_batch: int = 512, crash_limit: int = 0) -> None:
        self.path = path
        self.commit_batch = commit_batch
        self.crash_limit = crash_limit
        self.owner: str | None = None  # the delivery run this store claims for (Store.owner)
        self._writer: _GroupCommit | None = None
        self._reader: _Reader | None = None

    async def open(self, *, create: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if not create and not self.path.exists():
            raise NoSpool(f"no spool at {self.path.parent}")
        with space_errors(self.path.parent):
            spooldir.create(self.path.parent)
            spooldir.create_file(self.path)  # 0600; SQLite gives -wal and -shm the database's mode
            wconn = connect(self.path)
            create_schema(wconn)
        self._writer = _GroupCommit(wconn, self.commit_batch, self.path.parent)
        self._reader = _Reader(connect(self.path), loop, name="msgspool-reader")
        self._reader.start()

    async def upgrade(self) -> list[str]:
        def run() -> list[str]:
            with space_errors(self.path.parent):
                spooldir.create(self.path.parent)
                spooldir.create_file(self.path)
                conn = connect(self.path)
                try:
                    before = conn.execute("PRAGMA user_version").fetchone()[0]
                    create_schema(conn)
                finally:
                    conn.close()
            if before >= SCHEMA_VERSION:
                return []
            return [f"schema {before} -> {SCHEMA_VERSION}" if before else f"new spool, schema {SCHEMA_VERSION}"]

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.stop)
        self._writer = self._reader = None

    def _write(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> asyncio.Future[T]:
        assert self._writer is not None, "store is not open"
        return self._writer.submit(fn, durable)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        assert self._reader is not None, "store is not open"
        return self._reader.submit(fn)

    @property
    def commit_stats(self) -> tuple[int, int]:
        w = self._writer
        return (w.commits, w.committed_jobs) if w else (0, 0)

    async def submit(self, msg: Message, copies: Sequence[Message] = (), *, owner: str | None = None) -> list[Event]:
        owner = owner if owner is not None else self.owner
        return await self._write(lambda c: op_submit(c, msg, copies, owner))

    async def claim(self, now: float, limit: int, *, whole_messages: bool = False) -> list[Message]:
        owner = self.owner
        return await self._write(lambda c: op_claim(c, now, limit, whole_messages, owner), durable=False)

    async def settle(self, settlements: Sequence[Settlement], now: float) -> list[Event]:
        owner = self.owner
        return await self._write(lambda c: op_settle(c, settlements, now, self.crash_limit, owner), durable=False)

    async def unclaim(self, recipients: Sequence[tuple[str, int]], now: float, *,
                      owner: str | None = None) -> list[Event]:
        owner = owner if owner is not None else self.owner
        return await self._write(lambda c: op_unclaim(c, recipients, now, owner), durable=False)

    async def cancel_recipients(self, keep: dict[str, list[int]], now: float) -> dict[str, list[str]]:
        return await self._write(lambda c: op_cancel_recipients(c, keep, now))

    async def active_recipients(self) -> list[tuple[str, int, str | None]]:
        return await self.read(active_recipients)

    async def return_stuck(self, rows: Sequence[tuple[str, int, str | None]], now: float) -> list[Event]:
        return await self._write(lambda c: op_return_stuck(c, rows, now), durable=False)

    async def release_destination(self, transport: str, nexthop: str, now: float) -> int:
        return await self._chunked(lambda c: op_release_destination(c, transport, nexthop, now), durable=False)

    async def next_due(self) -> float | None:
        return await self.read(next_due)

    async def mark_delay_warnings(self, now: float) -> int:
        return await self._chunked(lambda c: op_mark_delay_warnings(c, now), durable=False)

    async def next_delay_warning(self) -> float | None:
        return await self.read(next_delay_warning)

    async def waiting_destinations(self) -> list[tuple[str, str]]:
        return await self.read(waiting_destinations)

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        return await self._write(lambda c: [_insert_event(c, e) for e in events], durable=False)

    async def hold(self, ids: Sequence[str], now: float) -> list[str]:
        return await self._write(lambda c: op_hold(c, ids, now))

    async def release(self, ids: Sequence[str], now: float) -> list[str]:
        return await self._write(lambda c: op_release(c, ids, now))

    async def flush(self, ids: Sequence[str] | None, now: float) -> int:
        if ids is not None:
            return await self._write(lambda c: op_flush(c, ids, now))
        return await self._chunked(lambda c: op_flush(c, None, now), durable=True)

    async def _chunked(self, op: Callable[[sqlite3.Connection], int], *, durable: bool, chunk: int = CHUNK) -> int:
        """Repeat a write that changes at most `chunk` rows per transaction until it is done."""
        total = 0
        while True:
            n = await self._write(op, durable)
            total += n
            if n < chunk:
                return total

    async def delete(self, ids: Sequence[str]) -> list[str]:
        return await self._write(lambda c: op_delete(c, ids))

    async def webhook_cursor(self) -> int:
        return await self._write(op_webhook_cursor)

    async def enqueue_webhooks(self, after: int, upto: int, messages: Sequence[Message]) -> list[Event] | None:
        # Durable when it queues deliveries; moving the cursor past skipped events alone may be
        # forgotten by a power loss: they are skipped again.
        return await self._write(lambda c: op_enqueue_webhooks(c, after, upto, messages), durable=bool(messages))

    async def purge(self, sent_before: float, events_before: float) -> int:
        return await self._write(lambda c: op_purge(c, sent_before, events_before), durable=False)

    async def set_read(self, ids: Sequence[str], read: bool, now: float) -> list[Event]:
        return await self._write(lambda c: op_set_read(c, ids, read, now))

    async def send_receipt(self, receipt: ReadReceipt, now: float) -> list[Event]:
        return await self._write(lambda c: op_send_receipt(c, receipt, now))

    async def pending_reports(self, limit: int = 100) -> list[PendingReport]:
        return await self.read(lambda c: pending_reports(c, limit))

    async def reported(self, message_id: str, owed: Sequence[tuple[int, str]], report: Message | None,
                       copies: Sequence[Message] = ()) -> list[Event]:
        owner, now = self.owner, time.time()
        return await self._write(lambda c: op_reported(c, message_id, owed, report, copies, owner, now))

    # leases (ports.Leases)
    async def register_node(self, owner: str, host: str, pid: int, now: float, lease_time: float, *,
                            sole: bool = False) -> None:
        await self._write(lambda c: op_register_node(c, owner, host, pid, now, lease_time, sole))

    async def heartbeat(self, owner: str, now: float, lease_time: float) -> bool:
        return await self._write(lambda c: op_heartbeat(c, owner, now, lease_time), durable=False)

    async def rescue(self, now: float) -> int:
        if not await self.read(lambda c: rescue_due(c, now)):  # the common case: no write at all
            return 0
        return await self._chunked(lambda c: op_rescue(c, now), durable=False)

    async def retire_node(self, owner: str, now: float) -> int:
        return await self._write(lambda c: op_retire_node(c, owner, now), durable=False)

    async def nodes(self, now: float) -> list[dict[str, Any]]:
        return await self.read(lambda c: list_nodes(c, now))

    async def drain_node(self, owner: str, now: float) -> bool:
        return await self._write(lambda c: op_drain_node(c, owner, now))

    async def preprocessed(self, message: Message, result: Preprocessed,
                           now: float) -> tuple[list[Message], list[Event]]:
        owner = self.owner
        return await self._write(lambda c: op_preprocessed(c, message, result, now, owner))

    async def requeue(self, ids: Sequence[str], now: float) -> list[str]:
        return await self._write(lambda c: op_requeue(c, ids, now))

    async def set_receive_folder(self, mailbox: str, message_class: str, folder: str) -> None:
        await self._write(lambda c: op_set_receive_folder(c, mailbox, message_class, folder))

    async def get(self, message_id: str) -> MessageInfo | None:
        return await self.read(lambda c: get_message(c, message_id))

    async def content(self, message_id: str) -> bytes | None:
        return await self.read(lambda c: get_content(c, message_id))

    async def list_messages(self, folders: Sequence[str], mailbox: str | None, limit: int, *,
                            after: tuple[float, str] | None = None) -> list[MessageInfo]:
        return await self.read(lambda c: list(itertools.islice(
            iter_messages(c, folders, mailbox, page=min(limit, 500) or 1, after=after), limit)))

    async def counts(self) -> dict[str, int]:
        return await self.read(queue_counts)

    async def events_after(self, after_id: int, limit: int = 1000) -> list[Event]:
        return await self.read(lambda c: events_after(c, after_id, limit))

    async def token(self, token_id: str) -> tuple[Token, str] | None:
        return await self.read(lambda c: find_token(c, token_id))

    async def has_tokens(self) -> bool:
        return await self.read(any_token)

    async def user(self, name: str) -> tuple[User, str] | None:
        return await self.read(lambda c: find_user(c, name))

    # The CLI's management of tokens and users (Credentials), each in a commit of its own.

    async def tokens(self) -> list[Token]:
        return await self.read(list_tokens)

    async def create_token(self, new: NewToken) -> None:
        await self._write(lambda c: op_create_token(c, new))

    async def revoke_token(self, id_or_name: str) -> Token | None:
        return await self._write(lambda c: op_revoke_token(c, id_or_name))

    async def users(self) -> list[User]:
        return await self.read(list_users)

    async def add_user(self, user: User, password_hash: str, *, replace: bool = False) -> bool:
        return await self._write(lambda c: op_add_user(c, user, password_hash, replace=replace))

    async def delete_user(self, name: str) -> bool:
        return await self._write(lambda c: op_delete_user(c, name))


if TYPE_CHECKING:  # mypy proves the class plays every role of ports.Store
    _conforms: type[Store] = SQLiteStore
