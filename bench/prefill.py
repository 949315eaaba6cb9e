"""Fill a spool with N deferred messages, fast: ``python -m bench.prefill DATA_DIR N``.

The only part of the bench that knows msgspool's insides. It writes what the daemon would have
written for N one-recipient messages (about 1 KB each) that were submitted over the last hours and
whose destination then refused connections: the message (with its subject), its content, one recipient in state
`deferred` with one attempt, the last reply, `wait_destination` set (waiting for a down
destination) and the next attempt a day away, plus the `submitted` and `deferred` events. The
destination is ``smtp:127.0.0.1:9`` (nothing listens there), so a daemon that probes it finds it
still down and the backlog stays where it is, while fresh traffic goes to the daemon's --relay.

The schema comes from msgspool itself (`msgspool.stores.sqlite.create_schema`); the rows are
written with raw SQL matching src/msgspool/stores/sql/sqlite.sql, 50,000 messages per transaction.
Should those statements no longer fit the schema, it falls back to the store's own `op_submit`
(slower, but follows the schema wherever it moves).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

NEXTHOP = "127.0.0.1:9"
REPLY = (421, "4.4.1", "Connection refused by 127.0.0.1:9")
DOMAIN = "deferred.example"
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32, as msgspool's queue ids
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> two digits
_RANDOM = bytes.maketrans(bytes(range(256)), bytes(_ALPHABET[b & 31].encode()[0] for b in range(256)))


def queue_id(t: float) -> str:
    """The shape of msgspool's queue ids: 10 base-32 digits of ms, 8 random ones."""
    ms = int(t * 1000)
    return ("".join(_PAIRS[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0))
            + os.urandom(8).translate(_RANDOM).decode())


def content(i: int, size: int = 1000) -> bytes:
    head = (f"Received: from client.example (localhost [127.0.0.1])\r\n\tby bench.example (msgspool)\r\n"
            f"From: <sender{i % 1000}@sender.example>\r\nTo: <user{i}@{DOMAIN}>\r\n"
            f"Subject: deferred message {i}\r\nMessage-ID: <prefill-{i}@sender.example>\r\n\r\n")
    full, rest = divmod(max(0, size - len(head)), 78)
    return (head + ("y" * 76 + "\r\n") * full + ("y" * (rest - 2) + "\r\n" if rest > 2 else "")).encode()


def prefill(data_dir: Path, count: int, *, size: int = 1000, batch: int = 50_000,
            progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Create `data_dir`/spool.db with `count` deferred messages; returns timing and size."""
    from msgspool.stores import sqlite as store

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / getattr(store, "DB_NAME", "spool.db")
    if path.exists():
        raise SystemExit(f"{path} exists: prefill wants a fresh spool")
    conn = store.connect(path)
    store.create_schema(conn)
    conn.execute("PRAGMA journal_mode = OFF")  # a bench fixture: every page written once, not WAL + checkpoint
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    t0 = time.monotonic()
    now = time.time()
    writer = _raw_batch
    done = 0
    while done < count:
        n = min(batch, count - done)
        try:
            conn.execute("BEGIN")
            writer(conn, done, n, now, count, size)
            conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            conn.execute("ROLLBACK")
            if writer is _submit_batch:
                raise
            if progress:
                progress(f"prefill: raw SQL no longer fits the schema ({err}); using op_submit")
            writer = _submit_batch
            continue
        done += n
        if progress and (done % 200_000 == 0 or done == count):
            progress(f"prefill: {done:,}/{count:,} messages, {time.monotonic() - t0:.0f} s")
    conn.execute("PRAGMA journal_mode = WAL")  # as msgspool keeps its spool
    conn.close()
    # Written with synchronous=OFF: put the gigabytes on disk now, or the kernel's writeback of them
    # slows the first fsyncs of whatever is measured next (seen: the first load round at 1/4 speed).
    os.sync()
    seconds = time.monotonic() - t0
    return {"messages": count, "seconds": seconds, "bytes": path.stat().st_size}


def _times(i: int, now: float, count: int) -> tuple[float, float, float]:
    """submitted (spread over the last two hours), last attempt, next attempt (a day away)."""
    submitted = now - 7200.0 + 7000.0 * i / max(1, count)
    return submitted, submitted + 0.5, now + 86400.0 + (i % 3600)


def _raw_batch(conn: sqlite3.Connection, first: int, n: int, now: float, count: int, size: int) -> None:
    start_content = (conn.execute("SELECT COALESCE(max(id), 0) FROM contents").fetchone()[0]) + 1
    contents, messages, recipients, events = [], [], [], []
    code, enhanced, text = REPLY
    reply_line = f"{code} {enhanced} {text}"
    deferred_detail = json.dumps({"transport": "smtp", "reply": reply_line, "dsn": enhanced})
    for k in range(n):
        i = first + k
        submitted, attempted, next_at = _times(i, now, count)
        mid = queue_id(submitted)
        data = content(i, size)
        cid = start_content + k
        address = f"user{i}@{DOMAIN}"
        sender = f"sender{i % 1000}@sender.example"
        contents.append((cid, data))
        messages.append((mid, "", "outbox", sender, len(data), submitted, cid, "IPM.Note", 0, "smtp",
                         f"deferred message {i}"))
        recipients.append((mid, 0, address, "SMTP", "to", "smtp", NEXTHOP, "deferred", 1, next_at, attempted,
                           code, enhanced, text, 1))
        events.append((submitted, "submitted", mid, None, None, None,
                       f'{{"sender": "{sender}", "size": {len(data)}}}'))
        events.append((attempted, "deferred", mid, address, None, None, deferred_detail))
    conn.executemany("INSERT INTO contents (id, data) VALUES (?,?)", contents)
    conn.executemany("INSERT INTO messages (id, mailbox, folder, sender, size, submitted_at, content_id,"
                     " message_class, priority, origin, subject) VALUES (?,?,?,?,?,?,?,?,?,?,?)", messages)
    conn.executemany("INSERT INTO recipients (message_id, idx, address, addrtype, type, transport, nexthop,"
                     " status, attempts, next_attempt_at, last_attempt_at, reply_code, reply_enhanced,"
                     " reply_text, wait_destination) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", recipients)
    conn.executemany("INSERT INTO events (time, type, message_id, recipient, mailbox, folder, detail)"
                     " VALUES (?,?,?,?,?,?,?)", events)


def _submit_batch(conn: sqlite3.Connection, first: int, n: int, now: float, count: int, size: int) -> None:
    """The same messages through the store's own statement (schema-proof, slower)."""
    from msgspool.domain.message import Message, Recipient
    from msgspool.domain.outcome import Reply
    from msgspool.domain.recipient import Status
    from msgspool.stores.ops import op_submit

    code, enhanced, text = REPLY
    ids = []
    for k in range(n):
        i = first + k
        submitted, attempted, next_at = _times(i, now, count)
        mid = queue_id(submitted)
        ids.append(mid)
        rcpt = Recipient(address=f"user{i}@{DOMAIN}", transport="smtp", nexthop=NEXTHOP, status=Status.DEFERRED,
                         attempts=1, next_attempt_at=next_at, last_attempt_at=attempted,
                         last_reply=Reply(code, enhanced, text))
        op_submit(conn, Message(id=mid, sender=f"sender{i % 1000}@sender.example", content=content(i, size),
                                recipients=[rcpt], submitted_at=submitted, origin="smtp"), ())
    with contextlib.suppress(sqlite3.OperationalError):  # no such column: the backlog waits by time alone
        conn.executemany("UPDATE recipients SET wait_destination = 1 WHERE message_id = ?", [(m,) for m in ids])


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bench.prefill DATA_DIR COUNT")
    result = prefill(Path(sys.argv[1]), int(sys.argv[2]), progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
