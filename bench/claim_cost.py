"""What one refill claim costs on a big spool: ``python -m bench.claim_cost [N] [URGENT]``.

Builds a throwaway spool (in a temporary directory) with N due one-recipient messages of normal
priority and URGENT due urgent ones written after them (the worst case for a claim that goes by
time only: the urgent retries are the youngest), then times `op_claim(now, 1000)` — the
scheduler's CLAIM_BATCH — each inside a transaction that is rolled back, so every round claims
from the same spool. Prints the median and worst time and how many of the urgent recipients the
first claim took. The messages share one small content row: the claim's cost is the index walk
and the rows it loads, not the bytes of the messages.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from msgspool.stores import ops
from msgspool.stores import sqlite as store

CLAIM = 1000
ROUNDS = 20


def build(path: Path, normal: int, urgent: int, now: float) -> None:
    conn = store.connect(path)
    store.create_schema(conn)
    conn.execute("PRAGMA synchronous = OFF")
    has_class = "priority" in {row[1] for row in conn.execute("PRAGMA table_info(recipients)")}
    conn.execute("BEGIN")
    conn.execute("INSERT INTO contents (id, data) VALUES (1, ?)", (b"Subject: x\r\n\r\nx\r\n",))
    total = normal + urgent
    for start in range(0, total, 50_000):
        messages, recipients = [], []
        for i in range(start, min(total, start + 50_000)):
            priority = 1 if i >= normal else 0
            mid = f"M{i:012d}"
            due = now - 86400.0 + i * 0.01  # all due, oldest first; the urgent ones are the youngest
            messages.append((mid, "outbox", "a@example.org", 20, due - 1, 1, priority))
            row = (mid, 0, f"u{i}@example.com", "SMTP", "to", "smtp", "relay:25", "deferred", 1, due)
            recipients.append((*row, priority) if has_class else row)
        conn.executemany("INSERT INTO messages (id, folder, sender, size, submitted_at, content_id, priority)"
                         " VALUES (?,?,?,?,?,?,?)", messages)
        columns = "message_id, idx, address, addrtype, type, transport, nexthop, status, attempts, next_attempt_at"
        marks = ",".join("?" * len(recipients[0]))
        conn.executemany(f"INSERT INTO recipients ({columns}{', priority' if has_class else ''})"
                         f" VALUES ({marks})", recipients)
    conn.execute("COMMIT")
    conn.close()


def measure(path: Path, now: float, urgent: int) -> tuple[list[float], int]:
    conn = store.connect(path)
    times, first_urgent = [], 0
    for n in range(ROUNDS):
        conn.execute("BEGIN IMMEDIATE")
        t0 = time.perf_counter()
        messages = ops.op_claim(conn, now, CLAIM)
        times.append(time.perf_counter() - t0)
        conn.execute("ROLLBACK")
        if n == 0:
            first_urgent = sum(1 for m in messages if m.priority > 0)
    conn.close()
    return times, first_urgent


def main(argv: list[str]) -> None:
    normal = int(argv[0]) if argv else 1_000_000
    urgent = int(argv[1]) if len(argv) > 1 else 100
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spool.db"
        t0 = time.monotonic()
        build(path, normal, urgent, now)
        print(f"built {normal:,} normal + {urgent:,} urgent due recipients in {time.monotonic() - t0:.0f} s")
        times, first_urgent = measure(path, now, urgent)
    ms = sorted(t * 1000 for t in times)
    print(f"op_claim({CLAIM}): median {statistics.median(ms):.1f} ms, worst {ms[-1]:.1f} ms over {ROUNDS} rounds;"
          f" urgent recipients in the first claim: {first_urgent} of {urgent}")


if __name__ == "__main__":
    main(sys.argv[1:])
